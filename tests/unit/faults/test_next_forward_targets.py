"""Targets are what the coming forward reads, also while another request prefills a long prompt in
chunks (an EXTEND forward runs only the prompts it prefills): detection at latency 0, as FAULTS.md says."""

from __future__ import annotations

import random

import pytest

from tests.unit.faults.conftest import SHARED

CHUNK = 16
LONG_PROMPT = 96  # six EXTEND forwards of CHUNK tokens, during which the short requests do not run

# (kind, target) for every kind whose corruption a running request reads.
READ_BY_A_RUNNING_REQUEST = [
    ("swap_next_token", {}),
    ("evict_radix_node", {"node": "deepest_locked"}),
    ("corrupt_kv_bytes", {"slot": "used"}),
    ("corrupt_kv_bytes", {"slot": "post_forward"}),
    ("corrupt_canary", {"slot": "used"}),
    ("req_to_token_remap", {}),
    ("double_free", {"slot": "used"}),
    ("remap_swa_slot", {"group": "swa"}),
]


def _cases():
    for mode in ("mha", "swa", "dsv4"):
        for kind, given in READ_BY_A_RUNNING_REQUEST:
            if kind == "remap_swa_slot" and mode == "mha":
                continue
            target = {**given, "group": "swa"} if mode == "dsv4" and given.get("slot") == "post_forward" else given
            name = f"{mode}-{kind}-{'-'.join(target.values()) or 'default'}"
            # The long prompt about to be admitted (the coming forward prefills only it), or in mid-prefill
            # (the kinds that once picked a decoding request then).
            yield pytest.param(mode, kind, target, False, id=f"{name}-long-prompt-waiting")
            if kind in ("swap_next_token", "evict_radix_node"):
                yield pytest.param(mode, kind, target, True, id=f"{name}-long-prompt-prefilling")


@pytest.mark.parametrize(("mode", "kind", "target", "admitted"), list(_cases()))
def test_a_fault_during_a_chunked_prefill_is_read_by_the_forward_it_precedes(fault_run, mode, kind, target, admitted):
    run = fault_run(mode, chunked_prefill_size=CHUNK)
    run.submit(2, prompt_len=len(SHARED) + 8, max_new_tokens=60)
    run.steps(6)  # both prompts cached, both decoding
    rng = random.Random(1)
    run.engine.submit(SHARED + [rng.randrange(1, 1000) for _ in range(LONG_PROMPT)], 4)
    if admitted:
        run.steps(3)
        (long_request,) = [req for req in run.engine.scheduler.running if req.needs_prefill]
        assert long_request.kv_len > len(SHARED)  # mid-prefill: the next forwards are its chunks only
    run.inject(kind=kind, at_step=0, target=target)
    run.steps(LONG_PROMPT // CHUNK + 4)

    (entry,) = run.entries
    assert entry.status == "applied", entry.detail
    violations = run.violations_from(entry.step)
    assert violations, f"{kind} applied at forward {entry.step} ({entry.detail}) was never reported"
    assert violations[0].step == entry.step, (
        f"{kind} applied at forward {entry.step} ({entry.detail}) was first reported at forward {violations[0].step}"
    )
