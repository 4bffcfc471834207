"""Each fault kind, applied in-process right before its trigger forward, is caught by the canary
under the reasons docs/FAULTS.md gives, and the engine serves on."""

from __future__ import annotations

import fnmatch
import random

import pytest

from kv_canary import RealKvHashMode
from kv_canary.records import RecordWord
from kv_canary_contract import Fault
from mock_models.faults.canary_records import corrupt_canary
from mock_models.faults.fault_request import resolve
from mock_models.faults.targets import FaultContext

REAL_KV = {"real_kv_hash"}
CHAIN = {"chain_hash", "position"}
RECORD = {"chain_hash", "position", "token"}


def first_reasons(violations) -> tuple[int, set[str], set[str]]:
    """(first step, reasons of that step's lines, their launch tags)."""
    step = violations[0].step
    lines = [v for v in violations if v.step == step]
    return step, {r for v in lines for r in v.fail_reasons}, {v.launch_tag for v in lines}


def reasons_within(violations, first: int, steps: int) -> set[str]:
    return {r for v in violations if first <= v.step <= first + steps for r in v.fail_reasons}


@pytest.mark.parametrize(
    ("mode", "kind", "target", "reasons", "tags"),
    [
        ("mha", "corrupt_kv_bytes", {"slot": "used"}, REAL_KV, "TAIL_K_FULL"),
        ("swa", "corrupt_kv_bytes", {"group": "swa", "slot": "used"}, REAL_KV, "TAIL_K_SWA"),
        ("dsv4", "corrupt_kv_bytes", {"slot": "post_forward"}, REAL_KV, "TAIL_K_SWA"),
        ("mha", "corrupt_canary", {}, RECORD, "HEAD_K_FULL"),
        ("swa", "corrupt_canary", {"group": "swa"}, RECORD, "HEAD_K_SWA"),
        ("mha", "req_to_token_remap", {}, CHAIN, "*_FULL"),
        ("dsv4", "req_to_token_remap", {"position": "in_window"}, CHAIN, "*_K_SWA"),
        ("swa", "remap_swa_slot", {}, CHAIN, "*_SWA"),
        ("mha", "double_free", {}, RECORD | REAL_KV, "*_FULL"),
        ("dsv4", "double_free", {"group": "swa"}, RECORD | REAL_KV, "*_K_SWA"),
        ("swa", "swap_next_token", {}, {"write_token"}, "*"),
    ],
)
def test_a_fault_on_a_running_request_is_caught_at_the_forward_it_precedes(
    fault_run, mode, kind, target, reasons, tags
):
    run = fault_run(mode)
    run.inject(kind=kind, at_step=8, target=target)
    run.submit(4)
    run.until_idle()
    (entry,) = run.entries
    assert (entry.status, entry.step) == ("applied", 8), entry.detail
    violations = run.violations_from(8)
    step, _, seen_tags = first_reasons(violations)
    assert step == 8 and all(fnmatch.fnmatchcase(tag, tags) for tag in seen_tags), seen_tags
    assert reasons & reasons_within(violations, 8, 4)


@pytest.mark.parametrize(
    ("mode", "target", "tags"),
    [
        ("mha", {}, {"HEAD_K_FULL", "HEAD_V_FULL"}),
        ("dsv4", {"group": "swa"}, {"HEAD_K_SWA"}),
    ],
)
def test_a_slot_freed_and_reused_within_one_forward_fails_that_forwards_head_verify(fault_run, mode, target, tags):
    # The freed slot goes to a new token of the very forward that reads it as a prefix: the HEAD
    # write lands before the HEAD verify, so no real-KV hash is needed to see it at once.
    run = fault_run(mode, real_kv_hash=RealKvHashMode.NONE)
    run.inject(kind="double_free", at_step=8, target=target)
    run.submit(4)
    run.until_idle()
    (entry,) = run.entries
    assert (entry.status, entry.step) == ("applied", 8), entry.detail
    step, reasons, seen_tags = first_reasons(run.violations_from(8))
    assert step == 8 and tags <= seen_tags and reasons & RECORD, (step, reasons, seen_tags)


def test_a_freed_slot_reused_by_another_request_breaks_the_chain_its_old_owner_reads(fault_run):
    run = fault_run("mha")
    run.inject(kind="double_free", at_step=8)
    run.submit(4)
    run.until_idle()
    later = [v for v in run.violations_from(8) if v.step > 8]
    assert {"chain_hash", "position"} & {r for v in later for r in v.fail_reasons}


@pytest.mark.parametrize("mode", ["mha", "swa", "dsv4"])
def test_evicting_a_locked_node_is_detected_once_its_slots_are_reused(fault_run, mode):
    run = fault_run(mode)
    run.inject(kind="evict_radix_node", at_step=4, target={"node": "deepest_locked"})
    run.submit(4)
    run.steps(2)
    run.submit(2, seed=1)  # their prefills reuse the freed slots
    run.until_idle()
    (entry,) = run.entries
    assert entry.status == "applied" and "force-evicted radix node" in entry.detail
    violations = run.violations_from(entry.step)
    assert violations[0].step - entry.step <= 4
    assert RECORD & {r for v in violations for r in v.fail_reasons}


def test_evicting_an_unlocked_node_is_a_silent_control(fault_run):
    run = fault_run("swa")
    run.submit(1, max_new_tokens=4)
    run.until_idle()
    run.inject(kind="evict_radix_node", at_step=run.engine.forward_count + 1, target={"node": "any_unlocked"})
    run.submit(2, seed=1)
    run.until_idle()
    assert run.entries[0].status == "applied" and "as LRU eviction would" in run.entries[0].detail
    assert run.violations() == []


@pytest.mark.parametrize("mode", ["mha", "swa", "dsv4"])
def test_a_stale_prefix_is_caught_when_the_next_request_matches_it(fault_run, mode):
    run = fault_run(mode)
    run.submit(2, max_new_tokens=8)
    run.until_idle()  # SHARED and both requests are cached, unlocked
    step = run.engine.forward_count + 1
    run.inject(kind="stale_prefix", at_step=step)
    run.submit(1, seed=3)
    run.until_idle()
    (entry,) = run.entries
    assert (entry.status, entry.step) == ("applied", step) and "the waiting request" in entry.detail
    first, reasons, _ = first_reasons(run.violations_from(step))
    assert first == step and {"token", "chain_hash"} & reasons


@pytest.mark.parametrize(("mode", "group", "tag"), [("mha", "full", "SWEEP_K_FULL"), ("swa", "swa", "SWEEP_K_SWA")])
def test_a_cached_slot_no_request_holds_is_caught_by_the_sweep(fault_run, mode, group, tag):
    run = fault_run(mode, sweep_interval=4)
    run.submit(2, max_new_tokens=8)
    run.until_idle()
    step = run.engine.forward_count + 1
    run.inject(kind="corrupt_kv_bytes", at_step=step, target={"group": group, "slot": "cached_unused"})
    run.engine.submit([7, 8, 9], 8)  # shares nothing: only the sweep reads the corrupted slot
    run.until_idle()
    assert run.entries[0].status == "applied"
    violations = run.violations_from(step)
    assert {(v.launch_tag, v.fail_reasons) for v in violations} == {(tag, ("real_kv_hash",))}
    assert violations[0].step - step < 4


class DrawsWord(random.Random):
    """Draws ``word`` for the record word, and bit 1."""

    def __init__(self, word: RecordWord) -> None:
        super().__init__(0)
        self.word = word

    def choice(self, words):
        return self.word

    def randrange(self, *args):
        return 1


@pytest.mark.parametrize(
    ("word", "reason"),
    [(RecordWord.TOKEN, "token"), (RecordWord.POSITION, "position"), (RecordWord.PREV_HASH, "chain_hash")],
)
def test_each_corrupted_record_word_fails_its_own_check(fault_run, word, reason):
    run = fault_run("mha")
    run.submit(2)
    run.steps(4)
    target = resolve(Fault(kind="corrupt_canary", at_step=1), run.engine.config, canary_installed=True).target
    details = []

    def corrupt(engine, batch):  # once forward 5 is scheduled, as the injector applies it
        details.append(
            corrupt_canary(FaultContext(engine=engine, target=target, rng=DrawsWord(word), step=5, batch=batch))
        )

    remove = run.engine.add_batch_hook(corrupt)
    run.steps(1)
    remove()
    assert f"bit 1 of the {word.name.lower()} word" in details[0]
    assert reason in {r for v in run.violations_from(5) if v.step == 5 for r in v.fail_reasons}


@pytest.mark.parametrize(
    ("mode", "kind", "group"),
    [
        ("swa", "remap_swa_slot", "swa"),
        ("dsv4", "remap_swa_slot", "swa"),
        ("dsv4", "req_to_token_remap", "full"),
        ("dsv4", "double_free", "full"),
    ],
)
def test_a_fault_just_out_of_the_window_breaks_the_chain_of_the_windows_first_position(fault_run, mode, kind, group):
    # position: out_of_window takes the newest such position, the window's predecessor: the SWA verify
    # of the window's first position hashes that predecessor's record to check its chain.
    run = fault_run(mode)
    run.inject(kind=kind, at_step=20, target={"group": group, "position": "out_of_window"})
    run.submit(3, max_new_tokens=30)
    run.until_idle()
    (entry,) = run.entries
    assert (entry.status, entry.step) == ("applied", 20), entry.detail
    remapped = int(entry.detail.split("position ")[1].split(")")[0])
    step, reasons, tags = first_reasons(run.violations_from(20))
    assert step == 20 and reasons == {"chain_hash"} and all(tag.endswith("_SWA") for tag in tags)
    assert {v.position for v in run.violations() if v.step == 20} == {remapped + 1}


def test_an_evicted_node_in_a_readers_window_is_seen_by_the_swa_verify_at_slot_0(fault_run):
    # Eviction sets the node's SWA map entries to 0: the SWA verify plans those window positions at
    # slot 0 (the padding row, whose record is never written) instead of skipping them.
    run = fault_run("swa")
    run.inject(kind="evict_radix_node", at_step=8, target={"node": "deepest_locked"})
    run.submit(4)
    run.until_idle()
    (entry,) = run.entries
    assert (entry.status, entry.step) == ("applied", 8), entry.detail
    at_injection = [v for v in run.violations_from(8) if v.step == 8]
    assert {v.launch_tag for v in at_injection if v.slot_idx == 0} >= {"HEAD_K_SWA", "HEAD_V_SWA"}


@pytest.mark.parametrize(
    ("mode", "target", "tags"),
    [("mha", {}, {"TAIL_K_FULL", "TAIL_V_FULL"}), ("swa", {"group": "swa"}, {"TAIL_K_SWA", "TAIL_V_SWA"})],
)
def test_a_lost_write_is_seen_only_by_the_lost_write_check(fault_run, mode, target, tags):
    unchecked = fault_run(mode)
    unchecked.inject(kind="lost_write", at_step=8, target=target)
    unchecked.submit(4)
    unchecked.until_idle()
    assert unchecked.entries[0].status == "applied" and unchecked.violations() == []

    checked = fault_run(mode, check_lost_writes=True)
    checked.inject(kind="lost_write", at_step=8, target=target)
    checked.submit(4)
    checked.until_idle()
    violations = checked.violations_from(8)
    assert {(v.step, v.fail_reasons) for v in violations} == {(8, ("lost_write",))}
    assert {v.launch_tag for v in violations} <= tags


def test_a_misdirected_write_fails_the_overwritten_slot_and_leaves_the_target_marked(fault_run):
    run = fault_run("dsv4", check_lost_writes=True)
    run.inject(kind="misdirected_write", at_step=8)
    run.submit(4)
    run.until_idle()
    (entry,) = run.entries
    assert (entry.status, entry.step) == ("applied", 8), entry.detail
    step, reasons, tags = first_reasons(run.violations_from(8))
    assert (step, reasons, tags) == (8, {"lost_write", "real_kv_hash"}, {"TAIL_K_SWA"})
