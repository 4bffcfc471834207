"""The body of ``POST /kv_canary/inject`` is the contract's ``Fault`` (``kv_canary_contract``): its
shape is checked by pydantic (answered 422); ``resolve`` judges it for this engine with the
contract's ``fault_problems`` (answered 400) and fills in the target defaults.
"""

from __future__ import annotations

import dataclasses

from kv_canary_contract import Fault, FaultKind, ResolvedTarget, fault_problems, model_mode, resolve_target
from mock_models.config import EngineConfig


class FaultRequestError(ValueError):
    """A well-shaped body that cannot be applied as asked; the message names the key and the fix."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class FaultSpec:
    kind: FaultKind
    at_step: int | None
    after_warmup_steps: int | None
    probability: float | None
    seed: int | None
    count: int
    target: ResolvedTarget


def resolve(body: Fault, config: EngineConfig, *, canary_installed: bool) -> FaultSpec:
    """The spec to schedule, or FaultRequestError listing every problem with the body."""
    mode = model_mode(config.model_mode.value)
    problems = fault_problems(
        body, mode=mode, canary_on=canary_installed, engine=config.contract_settings(), ranks=config.ranks
    )
    if problems:
        raise FaultRequestError("; ".join(problem.message for problem in problems))
    return FaultSpec(
        kind=body.kind,
        at_step=body.at_step,
        after_warmup_steps=body.after_warmup_steps,
        probability=body.probability,
        seed=body.seed,
        count=body.count,
        target=resolve_target(body, mode),
    )
