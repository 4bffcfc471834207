"""The kv_canary_stats line: at exactly every stats_interval-th forward, describing that forward."""

from __future__ import annotations

import logging

import pytest

from kv_canary import CanaryConfig, CanaryStatsLog, KernelBackend
from kv_canary.launch_tags import KvHalf, Phase, PoolGroupKind
from tests.unit.canary.fake_engine import FakeEngine
from tests.unit.canary.fake_radix import FakeRadixCache


@pytest.fixture
def log_text(caplog):
    caplog.set_level(logging.INFO, logger="kv_canary")
    return lambda: caplog.text


def make_engine(**overrides) -> FakeEngine:
    settings = {
        "backend": KernelBackend.TORCH,
        "stats_interval": 3,
        "health_check_interval": 0,
        "verify_capacity": 256,
        "write_capacity": 64,
        "max_requests_per_forward": 4,
        **overrides,
    }
    return FakeEngine(CanaryConfig(**settings))


def serve(engine: FakeEngine, forwards: int):
    request = engine.add_request([1, 2, 3, 4])
    engine.forward([request])
    for step in range(forwards - 1):
        engine.forward([request], new_tokens=[[60 + step]])
    return request


def test_lines_come_at_exactly_every_interval_and_one_forward_late(log_text):
    engine = make_engine()
    serve(engine, 9)
    assert [line.step for line in CanaryStatsLog.find_all(log_text())] == [3, 6]  # 9's is read at forward 10
    engine.forward([])
    assert [line.step for line in CanaryStatsLog.find_all(log_text())] == [3, 6, 9]
    engine.canary.flush()
    assert [line.step for line in CanaryStatsLog.find_all(log_text())] == [3, 6, 9]


def test_a_line_describes_the_counters_of_its_own_forward(log_text):
    engine = make_engine()
    serve(engine, 6)
    engine.canary.flush()
    line = CanaryStatsLog.find_last(log_text())
    snapshot = engine.canary.stats_snapshot()
    assert line.step == 6
    assert line.protected_tokens == sum(snapshot["slots_verified"].values()) > 0
    assert (line.sweep_passes, line.violations) == (0, 0)
    assert (line.launch_tags_active, line.launch_tags_expected) == (4, 4)


def test_protected_tokens_grow_and_violations_count_every_recorded_row(log_text):
    engine = make_engine()
    request = serve(engine, 3)
    engine.canary.group(PoolGroupKind.FULL).records(Phase.HEAD, KvHalf.K)[engine.slot_of(request, 1)] = 0
    for step in range(3):
        engine.forward([request], new_tokens=[[70 + step]])
    engine.canary.flush()
    first, second = CanaryStatsLog.find_all(log_text())
    assert second.protected_tokens > first.protected_tokens
    assert first.violations == 0
    assert second.violations == engine.canary.stats_snapshot()["violations_total"] > 0


def test_sweep_passes_and_tags_not_yet_run(log_text):
    engine = make_engine(sweep_interval=2)
    serve(engine, 3)
    engine.canary.flush()
    assert CanaryStatsLog.find_last(log_text()).format().endswith("sweep_passes=0 violations=0 launch_tags_active=4/6")
    engine.canary.attach_prefix_cache(FakeRadixCache())
    serve(engine, 3)
    engine.canary.flush()
    line = CanaryStatsLog.find_last(log_text())
    assert (line.step, line.sweep_passes, line.launch_tags_active, line.launch_tags_expected) == (6, 2, 6, 6)


def test_interval_zero_logs_nothing(log_text):
    engine = make_engine(stats_interval=0)
    serve(engine, 4)
    engine.canary.flush()
    assert CanaryStatsLog.find_all(log_text()) == []
