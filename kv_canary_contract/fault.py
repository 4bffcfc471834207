"""A fault as the scenario's ``fault`` mapping writes it, which is also the body of
``POST /kv_canary/inject``: its shape (pydantic) only. Whether it makes sense for its kind and for
a mode is ``fault_rules.fault_problems``.
"""

from __future__ import annotations

from pydantic import Field

from kv_canary_contract.bounds import MAX_FORWARDS, MAX_REQUESTS, SEED_MAX, SEED_MIN
from kv_canary_contract.fault_kinds import (
    FAULT_KIND_RULES,
    EngineRank,
    FaultKind,
    NodeChoice,
    PositionChoice,
    RequestState,
    SlotState,
)
from kv_canary_contract.modes import PoolGroup
from kv_canary_contract.problems import ContractModel

TRIGGERS = ("at_step", "after_warmup_steps", "probability")


class FaultTarget(ContractModel):
    """Where the fault lands; a key left out lets the engine choose its default for the kind."""

    group: PoolGroup | None = None
    request: RequestState | None = None
    slot: SlotState | None = None
    node: NodeChoice | None = None
    position: PositionChoice | None = None
    rank: EngineRank | None = None  # kinds that corrupt one rank's own state; default 0


class Fault(ContractModel):
    """When and where to corrupt; sent as-is (``None`` keys dropped) to ``POST /kv_canary/inject``."""

    kind: FaultKind
    at_step: int | None = Field(default=None, ge=0, le=MAX_FORWARDS, description="Engine forward at which to inject.")
    after_warmup_steps: int | None = Field(
        default=None, ge=0, le=MAX_FORWARDS, description="Forwards after the engine's warm-up at which to inject."
    )
    probability: float | None = Field(
        default=None, gt=0, le=1, description="Chance per forward to inject (needs seed)."
    )
    seed: int | None = Field(
        default=None,
        ge=SEED_MIN,
        le=SEED_MAX,
        description="Seeds the probability draws and each application's choices (bits, words, tokens); "
        "default: the fault's id.",
    )
    count: int = Field(default=1, ge=1, le=MAX_REQUESTS, description="How many injections.")
    target: FaultTarget = Field(default_factory=FaultTarget)

    @property
    def injects(self) -> bool:
        return FAULT_KIND_RULES[self.kind].injects

    def request_body(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude_none=True)
