"""Prefill-decode disaggregation: each prompt's KV and canary records move page by page from the
prefill engine's pools to slots the decode engine allocated, and the decode engine's canary
verifies what arrived."""

from __future__ import annotations

import pytest
import torch

from kv_canary.records import RecordWord
from mock_models.engine.disaggregation import DisaggregatedEngine, TransferFault
from mock_models.engine.engine import Engine
from tests.reliability.engine_invariants import check_engine_idle, check_engine_invariants
from tests.unit.mock_models.feature_engines import (
    MODES,
    feature_engine,
    prompts_on_shared_prefixes,
    run_checked,
    violations,
)

PROMPT_A = list(range(100, 130))
PROMPT_B = list(range(200, 230))


def pd_engine(mode: str, **settings) -> DisaggregatedEngine:
    engine = feature_engine(mode, disaggregation="prefill_decode", **settings)
    assert isinstance(engine, DisaggregatedEngine)
    return engine


def at_next_transfer(engine: DisaggregatedEngine, change, *, ready: int = 1) -> dict[str, int]:
    """Call ``change(engine)`` from the step hook that runs right before the first transfers of
    ``ready`` prompts at once; returns {"step": the decode forward that first reads them}."""
    seen: dict[str, int] = {}

    def hook(engine: Engine) -> None:
        assert isinstance(engine, DisaggregatedEngine)
        if not seen and len(engine.ready_transfers) >= ready:
            change(engine)
            seen["step"] = engine.forward_count + 1

    engine.add_step_hook(hook)
    return seen


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("page_size", [1, 4])
def test_transfers_under_eviction_on_both_sides_stay_clean_and_exact(mode, page_size):
    engine = pd_engine(mode, page_size=page_size)
    prompts = prompts_on_shared_prefixes(seed=page_size, count=12)
    run_checked(engine, prompts, [1 + i % 9 for i in range(12)])  # max_new_tokens 1: finished by the transfer
    check_engine_idle(engine.prefill)
    assert engine.transfer.transfers == 12 and violations(engine) == []
    assert any(prompt[:20] == other[:20] for prompt in prompts for other in prompts if other is not prompt)


@pytest.mark.parametrize("mode", MODES)
def test_the_records_that_arrive_are_the_ones_the_decode_canary_verifies(mode):
    """A record changed on the prefill side after its forward travels with the transfer and is caught
    by the decode engine's canary: the decode side verifies what arrived, not what it wrote itself."""
    engine = pd_engine(mode)
    group = engine.prefill.canary.groups[-1]  # FULL in mha, SWA in swa and dsv4: in the first window

    def flip_last_record(engine: DisaggregatedEngine) -> None:
        prefill_req, _ = engine.ready_transfers[0]
        slot = engine.prefill.req_to_token_pool.req_to_token[prefill_req.req_pool_idx, prefill_req.prompt_len - 1]
        if group.full_to_swa_index_mapping is not None:
            slot = group.full_to_swa_index_mapping[slot.long()]
        group.halves[next(iter(group.halves))].head[slot, RecordWord.TOKEN] ^= 1

    seen = at_next_transfer(engine, flip_last_record)
    engine.generate([PROMPT_A], 4)
    found = violations(engine)
    assert found and min(v.step for v in found) == seen["step"]
    assert {"token"} <= {reason for v in found for reason in v.fail_reasons}
    assert engine.prefill.canary.violations == []  # the prefill engine never read it again


@pytest.mark.parametrize(
    "mode, fault",
    [
        ("mha", TransferFault(drop="full")),
        ("swa", TransferFault(drop="full")),
        ("swa", TransferFault(drop="swa")),
        ("dsv4", TransferFault(drop="swa")),
        ("mha", TransferFault(misorder="full")),
        ("swa", TransferFault(misorder="swa")),
        ("dsv4", TransferFault(misorder="swa")),
    ],
)
def test_a_dropped_group_or_misordered_pages_are_caught_at_the_first_decode(mode, fault):
    engine = pd_engine(mode, page_size=2)
    seen = at_next_transfer(engine, lambda engine: setattr(engine, "next_transfer_fault", fault))
    engine.generate([PROMPT_A], 4)
    found = violations(engine)
    assert found and min(v.step for v in found) == seen["step"]
    group = fault.drop or fault.misorder
    assert any(v.launch_tag.endswith("_SWA") == (group == "swa") for v in found)


@pytest.mark.parametrize("mode", MODES)
def test_another_requests_pages_are_caught_at_the_first_decode(mode):
    engine = pd_engine(mode, chunked_prefill_size=64)  # both prompts prefill in one forward

    def deliver_the_other(engine: DisaggregatedEngine) -> None:
        _, (prefill_b, decode_b) = engine.ready_transfers
        engine.next_transfer_fault = TransferFault(donor=engine.transfer_plan(prefill_b, decode_b))

    seen = at_next_transfer(engine, deliver_the_other, ready=2)
    engine.generate([PROMPT_A, PROMPT_B], 4)
    found = violations(engine)
    assert found and min(v.step for v in found) == seen["step"] and any("token" in v.fail_reasons for v in found)


@pytest.mark.parametrize("mode", ["mha", "swa"])
def test_an_abort_in_each_stage_leaves_nothing_held(mode):
    engine = pd_engine(mode, max_running_requests=2)
    rids = [engine.submit(list(range(i, i + 40)), 6) for i in (1, 100, 200)]
    assert engine.abort(rids[2])  # still waiting for its pre-allocation
    engine.step()  # rids[0], rids[1]: pre-allocated, prefilled, transferred, decoding
    assert engine.abort(rids[1])
    late = engine.submit(list(range(300, 340)), 6)
    engine._bootstrap()
    assert late in {req.rid for req in engine.preallocated}
    check_engine_invariants(engine)
    assert engine.abort(late)  # pre-allocated, its prefill not run
    engine.run_until_idle()
    check_engine_idle(engine)
    check_engine_idle(engine.prefill)
    assert violations(engine) == []


def test_the_decode_side_allocates_the_prompt_and_only_its_first_window_of_swa_rows():
    engine = pd_engine("swa", page_size=2, swa_window=8)
    engine.submit(list(range(1, 30)), 5)
    engine._bootstrap()
    (req,) = engine.preallocated
    assert len(req.own_slots) == 29 and req.swa_released_len == 20  # align_down(29 - 8, 2)
    mapping = engine.swa_allocator.full_to_swa_index_mapping
    resident = (mapping[torch.tensor(req.own_slots)] != 0).tolist()
    assert resident == [False] * 20 + [True] * 9
