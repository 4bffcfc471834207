"""Driving the mock engine through a bug mode's workload, and judging what the canary saw against harm.

The engine samples with the token oracle, so its output *tokens* are right whatever its K/V holds;
what a corrupted read harms is the model's output at a sampled position, the hidden state a sampler
would read (``GenerationResult.output_digests``). ``first_wrong_output`` compares each request's
digests with the same request run alone on a fresh engine: the first forward whose output departs
is the first harm, and the canary must have reported by then.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

from kv_canary import CanaryConfig, CanaryMode, RealKvHashMode, ViolationRecord
from mock_models.config import EngineConfig
from mock_models.engine.engine import Engine
from mock_models.engine.request import GenerationResult
from tests.reliability.kv_shadow import KvShadow

# Digests of one request run in a batch and alone agree to about 1e-6; a read of the wrong K/V moves
# them by orders of magnitude more.
DIGEST_TOLERANCE = 1e-3


class Driver:
    """The workload's view of the engine: submit with a rid, step, abort, drain; results by rid."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.results: dict[str, GenerationResult] = {}
        self.prompts: dict[str, tuple[list[int], int]] = {}

    def submit(self, rid: str, prompt: Sequence[int], max_new_tokens: int) -> None:
        self.prompts[rid] = (list(prompt), max_new_tokens)
        self.engine.submit(prompt, max_new_tokens, rid=rid)

    def step(self, forwards: int = 1) -> None:
        for _ in range(forwards):
            self.results.update((result.rid, result) for result in self.engine.step())

    def abort(self, rid: str) -> None:
        assert self.engine.abort(rid), f"{rid} is not waiting or running"
        del self.prompts[rid]

    def drain(self, limit: int = 2000) -> None:
        for _ in range(limit):
            if not self.engine.has_work():
                return
            self.step()
        raise AssertionError(f"still busy after {limit} forwards")


Workload = Callable[[Driver], None]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class BugRun:
    config: EngineConfig
    engine: Engine
    results: dict[str, GenerationResult]
    prompts: dict[str, tuple[list[int], int]]
    violations: list[ViolationRecord]
    shadow: KvShadow

    @property
    def first_violation(self) -> int | None:
        return min((record.step for record in self.violations), default=None)

    @property
    def first_misread(self) -> int | None:
        event = self.shadow.first_event
        return None if event is None else event.forward

    def tags(self) -> set[str]:
        return {record.launch_tag for record in self.violations}

    def reasons(self) -> set[str]:
        return {reason for record in self.violations for reason in record.fail_reasons}

    def outputs_match_the_token_oracle(self) -> bool:
        oracle = self.engine.oracle
        return all(
            list(self.results[rid].output_ids) == oracle.continuation(prompt, max_new_tokens)
            for rid, (prompt, max_new_tokens) in self.prompts.items()
        )

    def first_wrong_output(self) -> int | None:
        """The first forward that sampled an output whose digest departs from the request run alone."""
        wrong = []
        for rid, (prompt, max_new_tokens) in self.prompts.items():
            result = self.results[rid]
            alone = _alone(self.config, tuple(prompt), max_new_tokens)
            for step, digest, reference in zip(result.output_steps, result.output_digests, alone, strict=True):
                if not math.isclose(digest, reference, rel_tol=DIGEST_TOLERANCE, abs_tol=DIGEST_TOLERANCE):
                    wrong.append(step)
                    break
        return min(wrong, default=None)


def run(config: EngineConfig, workload: Workload, **canary: Any) -> BugRun:
    """Run ``workload`` on a fresh engine with the canary (mode log, real-KV hash on) and the read oracle."""
    canary_config = CanaryConfig(mode=CanaryMode.LOG, real_kv_hash=RealKvHashMode.ALL, **canary)
    engine = Engine(config, canary_config=canary_config)
    shadow = KvShadow(engine)
    driver = Driver(engine)
    workload(driver)
    driver.drain()
    assert engine.canary is not None
    engine.canary.flush()
    return BugRun(
        config=config,
        engine=engine,
        results=driver.results,
        prompts=driver.prompts,
        violations=list(engine.canary.violations),
        shadow=shadow,
    )


@functools.cache
def _alone(config: EngineConfig, prompt: tuple[int, ...], max_new_tokens: int) -> tuple[float, ...]:
    reference = Engine(config.replace(bugs=(), overlap_schedule=False, new_token_ratio=1.0))
    (result,) = reference.generate([list(prompt)], max_new_tokens)
    return result.output_digests
