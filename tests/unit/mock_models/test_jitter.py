"""The engine's timing jitter: seeded, bounded, and where it says it pauses."""

from __future__ import annotations

import pytest
import torch

from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.engine import Engine
from mock_models.engine.jitter import Jitter

CPU = torch.device("cpu")


def draws(seed: int) -> list[int]:
    jitter = Jitter(max_us=50, seed=seed, device=CPU)
    totals = []
    for _ in range(20):
        jitter.pause()
        totals.append(jitter.total_us)
    return totals


def test_one_seed_replays_the_same_delays_within_the_bound():
    assert draws(3) == draws(3) != draws(4)
    assert draws(3)[-1] <= 20 * 50


def test_off_pauses_nothing_and_wraps_nothing():
    engine = Engine(EngineConfig(model_mode=ModelMode.SWA, swa_window=8, max_total_tokens=256))
    assert "set_kv_buffer" not in vars(engine.token_to_kv_pool) and "free" not in vars(engine.full_allocator)
    engine.submit([1, 2, 3], 4)
    engine.run_until_idle(max_steps=50)
    assert engine.jitter.pauses == 0


@pytest.mark.parametrize("mode", ["mha", "swa", "dsv4"])
def test_the_engine_pauses_at_scheduling_the_forward_every_write_and_every_free(mode):
    engine = Engine(
        EngineConfig(model_mode=ModelMode(mode), swa_window=8, max_total_tokens=256, jitter_max_us=1, jitter_seed=0)
    )
    engine.submit(list(range(1, 20)), 4)
    engine.run_until_idle(max_steps=50)
    forwards = engine.forward_count
    layers = len(engine.model_runner.spec.layer_kinds)
    # two per forward and one per layer's write per forward; beyond them, in the SWA modes, the
    # window's releases (mha frees nothing here: the finished request's slots go to the radix cache)
    expected = forwards * (2 + layers)
    assert engine.jitter.pauses == expected if mode == "mha" else engine.jitter.pauses > expected
    with pytest.raises(ValueError, match="must be >= 0"):
        Jitter(max_us=-1, seed=0, device=CPU)
