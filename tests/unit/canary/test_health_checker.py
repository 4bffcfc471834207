"""The health checker: a launch tag whose kernels stop running is an error, not silence."""

from __future__ import annotations

import dataclasses

import pytest

from kv_canary import CanaryConfig, KernelBackend, KvCanaryHealthError
from kv_canary.launch_tags import Phase
from kv_canary.observers.health_checker import HealthChecker
from kv_canary.sweep.sweep_orchestrator import SweepOrchestrator
from tests.unit.canary.fake_engine import FakeEngine
from tests.unit.canary.fake_radix import FakeRadixCache


def make_engine(**overrides) -> FakeEngine:
    settings = {
        "backend": KernelBackend.TORCH,
        "stats_interval": 0,
        "health_check_interval": 2,
        "health_check_warmup": 2,
        "verify_capacity": 256,
        "write_capacity": 64,
        "max_requests_per_forward": 4,
        **overrides,
    }
    return FakeEngine(CanaryConfig(**settings))


def observer(engine: FakeEngine, kind: type):
    return next(o for o in engine.canary.observers if isinstance(o, kind))


def decode(engine: FakeEngine, request, steps: int) -> None:
    for step in range(steps):
        engine.forward([request], new_tokens=[[50 + step]])


def unwire_phase(engine: FakeEngine, phase: Phase) -> None:
    """Simulate a path that stopped launching one phase's verify kernels."""
    kernels = engine.canary.kernels
    verify = kernels.verify

    def verify_except_phase(*, launch_tag, **kwargs):
        if launch_tag.phase is not phase:
            verify(launch_tag=launch_tag, **kwargs)

    engine.canary.kernels = dataclasses.replace(kernels, verify=verify_except_phase)


def test_healthy_forwards_pass_every_check():
    engine = make_engine()
    request = engine.add_request([1, 2, 3])
    engine.forward([request])
    decode(engine, request, 9)
    engine.canary.flush()
    # Check points at forwards 2 (baseline), 4, 6, 8, 10.
    assert observer(engine, HealthChecker).checks_passed == 4


def test_a_stalled_kernel_run_counter_raises_naming_the_tags():
    engine = make_engine()
    request = engine.add_request([1, 2, 3])
    engine.forward([request])
    decode(engine, request, 3)  # forwards 2 and 4 are check points; 4's is read at forward 5
    unwire_phase(engine, Phase.TAIL)
    decode(engine, request, 2)  # forwards 5, 6: no TAIL kernel runs; 6 is a check point
    with pytest.raises(KvCanaryHealthError, match=r"TAIL_K_FULL, TAIL_V_FULL did not run in forwards 5\.\.6") as raised:
        decode(engine, request, 1)  # the check point of forward 6 is read here
    assert raised.value.stalled_tags == ("TAIL_K_FULL", "TAIL_V_FULL")
    assert "silently unwired" in str(raised.value)


def test_nothing_is_judged_during_warmup():
    engine = make_engine(health_check_warmup=6)
    request = engine.add_request([1, 2, 3])
    unwire_phase(engine, Phase.HEAD)
    engine.forward([request])
    decode(engine, request, 5)
    engine.canary.flush()  # forward 6 is the first check point: a baseline only
    assert observer(engine, HealthChecker).checks_passed == 0


def test_sweep_tags_are_ignored_while_the_sweep_is_off():
    engine = make_engine(sweep_interval=0)
    assert not any(tag.phase is Phase.SWEEP for tag in engine.canary.active_launch_tags)
    request = engine.add_request([1, 2])
    engine.forward([request])
    decode(engine, request, 7)
    engine.canary.flush()
    assert observer(engine, HealthChecker).checks_passed == 3


def test_sweep_tags_are_ignored_until_a_prefix_cache_is_attached():
    engine = make_engine(sweep_interval=2)
    request = engine.add_request([1, 2])
    engine.forward([request])
    decode(engine, request, 7)
    engine.canary.flush()
    assert observer(engine, HealthChecker).checks_passed == 3
    assert engine.canary.stats_snapshot()["kernel_runs"]["SWEEP_K_FULL"] == 0


def test_sweep_tags_are_judged_only_over_windows_in_which_a_sweep_was_due():
    # Checks every forward, a sweep every 4th: windows without a sweep forward must not fail.
    engine = make_engine(sweep_interval=4, health_check_interval=1, health_check_warmup=1)
    engine.canary.attach_prefix_cache(FakeRadixCache())
    request = engine.add_request([1, 2])
    engine.forward([request])
    decode(engine, request, 11)
    engine.canary.flush()
    assert observer(engine, HealthChecker).checks_passed == 11


def test_a_sweep_that_stopped_running_is_reported():
    engine = make_engine(sweep_interval=2)
    engine.canary.attach_prefix_cache(FakeRadixCache())
    request = engine.add_request([1, 2])
    engine.forward([request])
    decode(engine, request, 3)
    observer(engine, SweepOrchestrator).run_step = lambda: None
    decode(engine, request, 2)
    with pytest.raises(KvCanaryHealthError) as raised:
        engine.canary.flush()
    assert raised.value.stalled_tags == ("SWEEP_K_FULL", "SWEEP_V_FULL")
