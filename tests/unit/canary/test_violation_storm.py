"""A violation storm stays readable: each (slot, launch tag, reasons) in full once an interval, repeats counted."""

from __future__ import annotations

import logging

import pytest

from kv_canary import CanaryConfig, CanaryMode, CanaryStatsLog, KernelBackend, KvCanaryViolationError, ViolationRecord
from kv_canary.launch_tags import KvHalf, Phase, PoolGroupKind
from kv_canary.log_lines import RepeatedViolation, ViolationRepeatsLog
from kv_canary.records import RecordWord
from tests.unit.canary.fake_engine import FakeEngine

SHARED = [11, 12, 13, 14, 15, 16]


def storm(interval: int, forwards: int, mode: CanaryMode = CanaryMode.LOG) -> tuple[FakeEngine, int]:
    """Three requests share a prefix whose slot at position 2 is corrupted; every decode re-reads it.

    Each read fails twice: the slot's own token, and the chain hash of the slot after it.
    """
    engine = FakeEngine(
        CanaryConfig(
            backend=KernelBackend.TORCH,
            mode=mode,
            stats_interval=1,
            health_check_interval=0,
            violation_repeat_interval=interval,
        )
    )
    first = engine.add_request(SHARED + [20])
    engine.forward([first])
    others = [engine.add_request(SHARED + [30 + i], share_prefix_with=first, shared_len=6) for i in range(2)]
    engine.forward(others)
    requests = [first, *others]
    victim = engine.slot_of(first, 2)
    engine.canary.group(PoolGroupKind.FULL).records(Phase.HEAD, KvHalf.K)[victim, RecordWord.TOKEN] += 1
    for step in range(forwards):
        engine.forward(requests, new_tokens=[[100 + step]] * 3)
    return engine, victim


def logged(caplog, cls):
    return [parsed for message in caplog.messages if (parsed := cls.parse(message)) is not None]


def test_a_slot_read_by_many_requests_is_logged_once_an_interval_and_its_repeats_are_counted(caplog):
    caplog.set_level(logging.INFO, logger="kv_canary")
    engine, victim = storm(interval=4, forwards=6)  # forwards 3..8 read the bad slot three times each
    engine.canary.flush()
    records = engine.canary.violations
    keys = {(r.slot_idx, r.launch_tag, r.fail_reasons) for r in records}
    assert len(records) == 6 * 3 * 2 and keys == {
        (victim, "HEAD_K_FULL", ("token",)),
        (victim + 1, "HEAD_K_FULL", ("chain_hash",)),
    }
    lines = logged(caplog, ViolationRecord)
    # Intervals end at forwards 4 and 8: forward 3 is drained at 4, forwards 4..7 at 5..8, forward 8 by the
    # flush. Each interval logs each key once, at its first violation.
    assert sorted((line.step, line.slot_idx) for line in lines) == [
        (step, slot) for step in (3, 4, 8) for slot in (victim, victim + 1)
    ]
    repeats = logged(caplog, ViolationRepeatsLog)
    assert (
        sum(line.repeats for line in repeats) == len(records) - len(lines) == engine.canary.reporter.repeats_suppressed
    )
    assert (
        repeats[0].keys == 2
        and RepeatedViolation(
            slot_idx=victim, launch_tag="HEAD_K_FULL", fail_reasons=("token",), repeats=repeats[0].repeats // 2
        )
        in repeats[0].top
    )
    assert logged(caplog, CanaryStatsLog)[-1].violations_repeated > 0
    assert engine.canary.stats_snapshot()["violations_repeated"] == len(records) - len(lines)


def test_with_the_interval_off_every_violation_is_logged(caplog):
    caplog.set_level(logging.INFO, logger="kv_canary")
    engine, _ = storm(interval=0, forwards=3)
    engine.canary.flush()
    assert len(logged(caplog, ViolationRecord)) == len(engine.canary.violations) == 3 * 3 * 2
    assert logged(caplog, ViolationRepeatsLog) == []
    assert all(line.violations_repeated == 0 for line in logged(caplog, CanaryStatsLog))


def test_raise_mode_raises_every_violation_as_before():
    with pytest.raises(KvCanaryViolationError) as raised:
        storm(interval=4, forwards=3, mode=CanaryMode.RAISE)
    assert len(raised.value.lines) == 3 * 2  # the first forward that read the slot: all three reads


def test_the_repeats_line_round_trips_and_stays_apart_from_violation_lines():
    line = ViolationRepeatsLog(
        repeats=185,
        keys=4,
        first_step=12,
        last_step=40,
        top=(
            RepeatedViolation(
                slot_idx=77, launch_tag="HEAD_K_FULL", fail_reasons=("chain_hash", "position"), repeats=90
            ),
            RepeatedViolation(slot_idx=78, launch_tag="TAIL_V_SWA", fail_reasons=("real_kv_hash",), repeats=95),
        ),
    )
    text = f"noise\nERROR {line.format()}\n"
    assert ViolationRepeatsLog.find_all(text) == [line]
    assert ViolationRecord.find_all(text) == []
    assert line.format() == (
        "kv_canary violation_repeats: repeats=185 keys=4 steps=12..40 "
        "top=77:HEAD_K_FULL:chain_hash+positionx90,78:TAIL_V_SWA:real_kv_hashx95"
    )


def test_a_stats_line_without_repeats_keeps_the_frozen_format_and_one_with_them_extends_it():
    stats = CanaryStatsLog(
        step=5, protected_tokens=10, sweep_passes=0, violations=3, launch_tags_active=4, launch_tags_expected=4
    )
    assert stats.format().endswith("launch_tags_active=4/4")
    repeated = CanaryStatsLog(
        step=5,
        protected_tokens=10,
        sweep_passes=0,
        violations=30,
        launch_tags_active=4,
        launch_tags_expected=4,
        violations_repeated=27,
    )
    assert repeated.format().endswith("launch_tags_active=4/4 violations_repeated=27")
    assert CanaryStatsLog.parse(repeated.format()) == repeated and CanaryStatsLog.parse(stats.format()) == stats
