"""The scenario YAML as pydantic models: its shape only.

The ``engine`` and ``fault`` mappings are the contract's (``kv_canary_contract``): the server takes
the same settings as flags and the same fault as its inject body. Whether a well-shaped scenario
can actually be run and checked (a fault its kind or mode cannot take, a pattern that matches no
launch tag, ...) is judged in ``rules.py``, which can name the exact key of each problem; pydantic
validators could only name the enclosing mapping.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from kv_canary_contract import (
    FAULT_KINDS,
    MAX_FORWARDS,
    MAX_RANKS,
    MAX_REQUESTS,
    MAX_TOKENS,
    MODEL_MODES,
    SEED_MAX,
    SEED_MIN,
    ContractModel,
    EngineSettings,
    Fault,
    ModelMode,
)

# FAULT_KINDS, MODEL_MODES, EngineSettings and Fault are the contract's, re-exported where the
# harness has always found the parts of a scenario.
__all__ = [
    "FAULT_KINDS",
    "MODEL_MODES",
    "EngineSettings",
    "Expectations",
    "Fault",
    "RequestSpec",
    "Scenario",
    "SwaDivergenceExpectation",
    "ViolationPattern",
    "Workload",
]

# '>=1', '== 0', '<5': an operator and an integer; ``comparison.py`` evaluates it.
ComparisonText = Annotated[str, StringConstraints(pattern=r"^\s*(>=|<=|==|!=|>|<)\s*-?\d+\s*$")]
# 'HEAD_*|TAIL_*': '|'-separated glob alternatives, none of them empty.
PatternText = Annotated[str, StringConstraints(pattern=r"^[^|\s]+(\|[^|\s]+)*$")]
KebabName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$", max_length=80)]
PrefixName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")]


class RequestSpec(ContractModel):
    shared_prefix: PrefixName | None = Field(
        None, description="Name from workload.shared_prefixes the prompt starts with."
    )
    prompt_len: int = Field(ge=1, le=MAX_TOKENS, description="Prompt length in tokens, the shared prefix included.")
    max_new_tokens: int = Field(ge=1, le=MAX_TOKENS)
    count: int = Field(
        1, ge=1, le=MAX_REQUESTS, description="How many such requests (each with its own random suffix)."
    )


class Workload(ContractModel):
    seed: int = Field(0, ge=SEED_MIN, le=SEED_MAX, description="Seeds every prompt token, shared prefixes included.")
    shared_prefixes: dict[PrefixName, Annotated[int, Field(ge=1, le=MAX_TOKENS)]] = Field(
        default_factory=dict, description="Prefix name -> length in tokens."
    )
    requests: list[RequestSpec] = Field(min_length=1)
    concurrency: int = Field(1, ge=1, le=MAX_REQUESTS, description="Requests in flight at once.")


class ViolationPattern(ContractModel):
    """Must match at least one logged violation; '|' separates alternatives, '*' is a glob."""

    launch_tag: PatternText = "*"
    fail_reason: PatternText = Field("*", description="A line matches if any of its reasons does.")
    rank: int | None = Field(
        None,
        ge=0,
        le=MAX_RANKS - 1,
        description="The engine rank whose canary logged it (a line without rank= is rank 0's); any when left out.",
    )


class SwaDivergenceExpectation(ContractModel):
    """Checked on the last kv_canary_swa_divergence line, in modes with FULL and SWA groups."""

    forward_ct: ComparisonText | None = None
    verify_full: ComparisonText | None = None
    verify_swa: ComparisonText | None = None
    swa_full_idx_divergence: ComparisonText | None = None
    swa_out_of_window_tokens: ComparisonText | None = None
    verify_swa_lt_verify_full: bool | None = Field(
        None, description="true: verify_swa < verify_full; false: verify_swa >= verify_full."
    )

    def comparisons(self) -> dict[str, str]:
        return {
            name: text
            for name, text in self.model_dump(exclude_none=True).items()
            if name != "verify_swa_lt_verify_full"
        }


class Expectations(ContractModel):
    detected: bool | None = Field(None, description="Required with a fault; false (zero violations) for baselines.")
    within_steps: int | None = Field(
        None, ge=0, le=MAX_FORWARDS, description="Forwards after the injection by which a violation must be logged."
    )
    violations: list[ViolationPattern] = Field(default_factory=list)
    swa_divergence: SwaDivergenceExpectation | None = None


class Scenario(ContractModel):
    name: KebabName = Field(description="Unique across the library, kebab-case.")
    description: str = Field(min_length=1)
    model_modes: list[ModelMode] = Field(min_length=1)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    workload: Workload
    fault: Fault | None = Field(None, description="Omit (or kind: none) for a clean baseline.")
    expect: Expectations

    @property
    def injects_fault(self) -> bool:
        return self.fault is not None and self.fault.injects

    @property
    def expects_detection(self) -> bool:
        return bool(self.expect.detected)
