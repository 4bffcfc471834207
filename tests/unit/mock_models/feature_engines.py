"""Helpers for the tests of the engine features (speculative decoding, host tier, disaggregation)."""

from __future__ import annotations

import random
from typing import Any

from kv_canary import CanaryConfig, CanaryMode, RealKvHashMode
from mock_models.config import EngineConfig
from mock_models.engine.build import build_engine
from mock_models.engine.engine import Engine
from tests.reliability.engine_invariants import check_engine_idle, check_engine_invariants

MODES = ["mha", "swa", "dsv4"]
CANARY = CanaryConfig(mode=CanaryMode.LOG, real_kv_hash=RealKvHashMode.ALL, sweep_interval=2)


def feature_engine(mode: str, **settings: Any) -> Engine:
    config: dict[str, Any] = {
        "model_mode": mode,
        "swa_window": 8,
        "strict_allocator": True,
        "max_total_tokens": 256,
        "chunked_prefill_size": 32,
        "max_running_requests": 4,
        "max_context_len": 256,
    }
    config.update(settings)
    return build_engine(EngineConfig(**config), canary_config=CANARY)


def prompts_on_shared_prefixes(seed: int, count: int, *, lengths: tuple[int, int] = (8, 40)) -> list[list[int]]:
    rng = random.Random(seed)
    prefixes = [[rng.randrange(1, 500) for _ in range(40)] for _ in range(3)]
    return [
        prefixes[i % 3][: rng.randrange(*lengths)] + [rng.randrange(500, 1000) for _ in range(rng.randrange(1, 12))]
        for i in range(count)
    ]


def run_checked(engine: Engine, prompts: list[list[int]], limits: list[int]) -> None:
    """Serve every prompt: outputs equal to the token oracle's, the engine's bookkeeping whole after
    every step, nothing left held at the end."""
    expected = {engine.submit(prompt, limit): (prompt, limit) for prompt, limit in zip(prompts, limits, strict=True)}
    while engine.has_work():
        for result in engine.step():
            prompt, limit = expected.pop(result.rid)
            assert list(result.output_ids) == engine.oracle.continuation(prompt, limit), result.rid
        check_engine_invariants(engine)
    assert not expected
    check_engine_idle(engine)


def violations(engine: Engine) -> list:
    found = []
    for canary in engine.canaries:
        canary.flush()
        found += canary.violations
    return found
