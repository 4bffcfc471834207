"""Scheduling: triggers, counts, retries, no_target, and the kv_canary_fault line."""

from __future__ import annotations

import logging

from mock_models.faults.injection_log import FaultLogLine
from mock_models.faults.injector import NO_TARGET_RETRY_FORWARDS


def test_a_fault_is_recorded_at_the_forward_it_precedes(fault_run):
    run = fault_run("mha")
    run.inject(kind="corrupt_canary", at_step=6)
    run.submit(2)
    run.until_idle()
    assert run.entries[0].step == 6
    assert run.violations()[0].step == 6  # its HEAD verify: latency 0


def test_a_target_missing_at_the_trigger_is_taken_as_soon_as_it_exists(fault_run):
    run = fault_run("swa")
    run.inject(kind="swap_next_token", at_step=1)
    run.submit(2)
    run.until_idle()
    # Forward 1 prefills: nothing is decoding yet. Forward 2 feeds the first sampled tokens.
    assert (run.entries[0].status, run.entries[0].step) == ("applied", 2)


def test_a_fault_that_never_finds_a_target_is_reported_no_target_with_the_reason(fault_run, caplog):
    caplog.set_level(logging.INFO, logger="mock_models.faults")
    run = fault_run("mha")
    fault_id = run.inject(kind="corrupt_kv_bytes", at_step=3, target={"slot": "cached_unused"})
    run.submit(1, max_new_tokens=NO_TARGET_RETRY_FORWARDS + 8)  # it locks all it caches until it ends
    run.until_idle()
    (entry,) = run.entries
    assert (entry.status, entry.step) == ("no_target", None)
    assert entry.detail == (
        f"no valid target right before forwards 3..{2 + NO_TARGET_RETRY_FORWARDS}: the radix "
        "cache holds no node that no running request locks"
    )
    lines = FaultLogLine.find_all(caplog.text)
    assert [(line.fault_id, line.status) for line in lines] == [(fault_id, "scheduled"), (fault_id, "no_target")]
    assert lines[-1].detail == entry.detail
    assert run.violations() == []


def test_count_applies_on_consecutive_forwards_each_with_its_own_entry(fault_run):
    run = fault_run("mha")
    run.inject(kind="corrupt_canary", at_step=5, count=3)
    run.submit(3)
    run.until_idle()
    assert [(entry.status, entry.step) for entry in run.entries] == [("applied", 5), ("applied", 6), ("applied", 7)]
    assert len({entry.fault_id for entry in run.entries}) == 1


def test_after_warmup_steps_counts_from_the_first_decode_forward(fault_run):
    run = fault_run("mha", chunked_prefill_size=16)
    run.inject(kind="corrupt_canary", after_warmup_steps=3)
    run.submit(2)  # 2 x 32 prompt tokens in chunks of 16: forwards 1-4 prefill, 5 is the first decode
    run.until_idle()
    assert run.entries[0].step == 5 + 3 + 1


def test_probability_draws_repeat_with_the_seed_and_start_after_the_warmup(fault_run):
    def steps(seed: int) -> list[int]:
        run = fault_run("mha")
        run.inject(kind="corrupt_canary", probability=0.3, seed=seed, count=3)
        run.submit(2)
        run.until_idle()
        assert all(entry.status == "applied" for entry in run.entries)
        return [entry.step for entry in run.entries]

    first = steps(7)
    assert first == steps(7) and first != steps(8)
    assert first[0] > 2 and len(set(first)) == 3  # forward 2 is the first decode: draws start after it


def test_kind_none_applies_nothing_at_the_next_forward(fault_run):
    run = fault_run("dsv4")
    run.inject(kind="none")
    run.submit(1, max_new_tokens=4)
    run.until_idle()
    assert (run.entries[0].status, run.entries[0].step) == ("applied", 1)
    assert run.violations() == []


def test_the_log_line_round_trips_and_stays_on_one_line():
    line = FaultLogLine(fault_id=3, kind="double_free", status="applied", step=24, detail="freed\nslot 7  twice")
    text = f"2026-01-01 INFO mock_models.faults: {line.format()}"
    assert line.format() == (
        "kv_canary_fault fault_id=3 kind=double_free status=applied step=24 detail=freed slot 7 twice"
    )
    assert FaultLogLine.parse(text) == FaultLogLine(
        fault_id=3, kind="double_free", status="applied", step=24, detail="freed slot 7 twice"
    )
    scheduled = FaultLogLine(fault_id=1, kind="none", status="scheduled", step=None, detail="")
    assert FaultLogLine.parse(scheduled.format()) == scheduled
