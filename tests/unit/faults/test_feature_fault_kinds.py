"""The fault kinds of the engine features (a KV transfer, the host tier, speculative decoding),
through the injector: each is caught at the forward it precedes, waits (and says why) while its
feature has nothing to corrupt, and is refused by an engine without the feature."""

from __future__ import annotations

import random

import pytest

from kv_canary_contract import Fault
from mock_models.faults.fault_request import FaultRequestError, resolve
from mock_models.faults.injector import NO_TARGET_RETRY_FORWARDS

DOC = [random.Random(8).randrange(1, 500) for _ in range(48)]


def caught_where_applied(run) -> None:
    (entry,) = run.entries
    assert entry.status == "applied", entry.detail
    violations = run.violations_from(entry.step)
    assert violations and violations[0].step == entry.step, entry.detail


@pytest.mark.parametrize(
    ("mode", "kind", "target"),
    [
        ("mha", "transfer_drop_group", {}),
        ("swa", "transfer_drop_group", {"group": "swa"}),
        ("dsv4", "transfer_drop_group", {}),
        ("swa", "transfer_misorder_pages", {"group": "full"}),
        ("dsv4", "transfer_misorder_pages", {}),
        ("mha", "transfer_foreign_pages", {}),
        ("dsv4", "transfer_foreign_pages", {}),
    ],
)
def test_a_transfer_fault_is_caught_at_the_first_decode_that_reads_it(fault_run, mode, kind, target):
    # Two at a time: the later prompts are prefilled and transferred while the first ones decode.
    run = fault_run(
        mode, disaggregation="prefill_decode", page_size=2, chunked_prefill_size=128, max_running_requests=2
    )
    run.inject(kind=kind, after_warmup_steps=1, target=target)
    run.submit(6, prompt_len=40, max_new_tokens=12)
    run.until_idle()
    caught_where_applied(run)


@pytest.mark.parametrize("mode", ["mha", "swa", "dsv4"])
def test_a_draft_position_shift_is_caught_at_its_verify_forward(fault_run, mode):
    run = fault_run(mode, speculative_num_steps=3)
    run.inject(kind="draft_position_shift", after_warmup_steps=2)
    run.submit(3, max_new_tokens=30)
    run.until_idle()
    caught_where_applied(run)
    assert "write_position" in run.violations()[0].fail_reasons


def offload_doc(run) -> None:
    """DOC cached by one request, then pushed to the host by others."""
    run.engine.generate([DOC + [1]], 4)
    rng = random.Random(9)
    for _ in range(4):
        run.engine.generate([[rng.randrange(500, 1000) for _ in range(48)]], 4)


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        ("mha", "restore_wrong_slots"),
        ("dsv4", "restore_wrong_slots"),
        ("swa", "host_copy_overwrite"),
        ("dsv4", "host_copy_overwrite"),
        ("swa", "stale_swa_translation"),
        ("dsv4", "stale_swa_translation"),
    ],
)
def test_a_host_tier_fault_is_caught_where_the_restored_prefix_is_read(fault_run, mode, kind):
    run = fault_run(mode, host_tier_tokens=1024, max_total_tokens=160, page_size=2)
    offload_doc(run)
    run.inject(kind=kind, at_step=run.engine.forward_count + 1)
    run.engine.submit(DOC + [2, 3], 8)
    run.until_idle()
    caught_where_applied(run)


@pytest.mark.parametrize(
    ("kind", "settings", "reason"),
    [
        ("transfer_drop_group", {"disaggregation": "prefill_decode"}, "no prompt's KV is ready to be transferred"),
        ("restore_wrong_slots", {"host_tier_tokens": 256}, "no waiting request's prefix is on the host"),
        ("host_copy_overwrite", {"host_tier_tokens": 256}, "no offloaded node"),
        ("draft_position_shift", {"speculative_num_steps": 2}, "no request is decoding"),
    ],
)
def test_a_feature_fault_with_nothing_to_corrupt_waits_then_says_why(fault_run, kind, settings, reason):
    run = fault_run("mha", **settings)
    # Due once the one request's transfer (in the first step) is done: nothing is transferred afterwards.
    run.inject(kind=kind, at_step=2)
    run.engine.submit(list(range(1, 40)), NO_TARGET_RETRY_FORWARDS + 8)
    run.until_idle()
    (entry,) = run.entries
    if kind == "draft_position_shift":  # the request decodes from the second forward: it lands there
        assert entry.status == "applied"
        return
    assert entry.status == "no_target" and reason in entry.detail, entry.detail


def test_an_engine_without_the_feature_refuses_its_kinds(fault_run):
    run = fault_run("swa")
    with pytest.raises(FaultRequestError, match="only an engine with disaggregation: prefill_decode"):
        resolve(Fault(kind="transfer_misorder_pages", at_step=1), run.engine.config, canary_installed=True)
