"""Fixtures for the mock engine's tests: small engines, a shared-prefix workload, forward spies."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

import pytest
import torch

from mock_models.config import EngineConfig
from mock_models.engine.engine import Engine
from mock_models.engine.forward_batch import ForwardBatch

# The tiny model's ops are too small for intra-op threads to pay off; on a shared 2-core
# machine they thrash instead.
torch.set_num_threads(1)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Workload:
    prompts: list[list[int]]
    max_new_tokens: list[int]


@pytest.fixture
def shared_prefix_workload() -> Workload:
    """Twelve requests on two shared prefixes (20 and 40 tokens), decodes long enough to slide
    far past a 16-token window."""
    rng = random.Random(1)
    shared = [rng.randrange(1000) for _ in range(40)]
    prompts, limits = [], []
    for i in range(12):
        prefix = shared if i % 2 else shared[:20]
        prompts.append(prefix + [rng.randrange(1000) for _ in range(rng.randrange(1, 30))])
        limits.append(rng.randrange(20, 60))
    return Workload(prompts=prompts, max_new_tokens=limits)


@pytest.fixture
def make_engine() -> Callable[..., Engine]:
    """Engines with strict allocators (a double free is a test failure) and a 16-token window."""

    def make(mode: str = "mha", **overrides: Any) -> Engine:
        settings: dict[str, Any] = {
            "model_mode": mode,
            "swa_window": 16,
            "strict_allocator": True,
            "max_total_tokens": 512,
        }
        settings.update(overrides)
        return Engine(EngineConfig(**settings))

    return make


def spy_on_forwards(engine: Engine, check: Callable[[Engine, ForwardBatch], None]) -> None:
    """Call ``check(engine, forward_batch)`` right before every model forward."""
    original = engine.model.forward

    def forward(input_ids, positions, forward_batch):
        check(engine, forward_batch)
        return original(input_ids, positions, forward_batch)

    engine.model.forward = forward


@pytest.fixture
def forward_spy() -> Callable[[Engine, Callable[[Engine, ForwardBatch], None]], None]:
    return spy_on_forwards
