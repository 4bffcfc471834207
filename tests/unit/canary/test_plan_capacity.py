"""Forwards larger than the configured plans: grown when the host knows the size, reported when not."""

from __future__ import annotations

import logging

import torch

from kv_canary import CanaryConfig, KernelBackend
from tests.unit.canary.fake_engine import FakeEngine


def small_plans_engine() -> FakeEngine:
    config = CanaryConfig(
        backend=KernelBackend.TORCH,
        stats_interval=0,
        health_check_interval=0,
        verify_capacity=4,
        write_capacity=4,
        max_requests_per_forward=1,
    )
    return FakeEngine(config)


def test_an_eager_forward_larger_than_the_plans_grows_them_and_stays_clean(caplog):
    engine = small_plans_engine()
    caplog.set_level(logging.INFO, logger="kv_canary")
    first = engine.add_request(list(range(10, 30)))
    second = engine.add_request(list(range(40, 52)))
    engine.forward([first, second])  # 32 new tokens, 2 requests: beyond every capacity
    for step in range(3):
        engine.forward([first, second], new_tokens=[[step], [step + 1]])
    engine.canary.flush()
    assert engine.canary.violations == []
    assert engine.canary.stats_snapshot()["plan_overflow_entries"] == 0
    assert any("plans grown to" in message for message in caplog.messages)


def test_overflow_the_host_cannot_prevent_is_reported_as_an_error(caplog):
    engine = small_plans_engine()
    engine.canary.state.plan_overflow.add_(7)  # what a captured forward beyond capacity leaves behind
    engine.forward([engine.add_request([1, 2])])
    engine.forward([])
    engine.canary.flush()
    assert any("kv_canary plan_overflow: dropped_entries=7 total=7" in message for message in caplog.messages)
    assert torch.equal(engine.canary.state.plan_overflow, torch.tensor([7]))
