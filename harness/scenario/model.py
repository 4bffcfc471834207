"""The scenario YAML as pydantic models: its shape only.

Whether a well-shaped scenario can actually be checked (a pattern that matches no launch tag,
an SWA target in a mode without SWA, ...) is judged in ``rules.py``, which can name the exact
key of each problem; pydantic validators could only name the enclosing mapping.
"""

from __future__ import annotations

import typing
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, StringConstraints

ModelMode = Literal["mha", "swa", "dsv4"]
MODEL_MODES: tuple[str, ...] = typing.get_args(ModelMode)

FaultKind = Literal[
    "none",
    "corrupt_kv_bytes",
    "corrupt_canary",
    "req_to_token_remap",
    "evict_radix_node",
    "double_free",
    "remap_swa_slot",
    "stale_prefix",
    "swap_next_token",
]
FAULT_KINDS: tuple[str, ...] = typing.get_args(FaultKind)

# '>=1', '== 0', '<5': an operator and an integer; ``comparison.py`` evaluates it.
ComparisonText = Annotated[str, StringConstraints(pattern=r"^\s*(>=|<=|==|!=|>|<)\s*-?\d+\s*$")]
# 'HEAD_*|TAIL_*': '|'-separated glob alternatives, none of them empty.
PatternText = Annotated[str, StringConstraints(pattern=r"^[^|\s]+(\|[^|\s]+)*$")]
KebabName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$", max_length=80)]
PrefixName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")]


class _ScenarioPart(BaseModel):
    # strict: YAML already gives typed scalars, so '8' for an int is an authoring mistake, not a
    # value to coerce; extra=forbid: a misspelt key must not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class EngineSettings(_ScenarioPart):
    """Server flags; a ``None`` optional flag is not passed, so the server's own default applies."""

    page_size: PositiveInt = Field(1, description="Tokens per KV page.")
    max_total_tokens: PositiveInt = Field(4096, description="KV slots in the full pool.")
    swa_window: PositiveInt = Field(64, description="Sliding-window size of SWA layers (modes swa, dsv4).")
    sweep_interval: NonNegativeInt = Field(0, description="Forwards between radix sweeps; 0 = no sweep.")
    real_kv: Literal["none", "partial", "all"] = Field(
        "partial", description="How much of each slot's real K/V bytes the TAIL record hashes.")
    canary_mode: Literal["log", "raise"] = Field("log", description="log: report violations; raise: also error.")
    max_running_requests: PositiveInt | None = Field(None, description="Batch size cap; default: the server's.")
    chunked_prefill_size: PositiveInt | None = Field(
        None, description="Prefill chunk in tokens; default: the server's.")
    seed: int | None = Field(None, description="Engine sampling seed; default: the server's.")
    stats_interval: NonNegativeInt | None = Field(
        None, description="Forwards between kv_canary_stats lines; default: the server's.")
    swa_divergence_interval: NonNegativeInt | None = Field(
        None, description="Forwards between kv_canary_swa_divergence lines; default: 1 when "
                          "expect.swa_divergence is set, else the server's.")


class RequestSpec(_ScenarioPart):
    shared_prefix: PrefixName | None = Field(
        None, description="Name from workload.shared_prefixes the prompt starts with.")
    prompt_len: PositiveInt = Field(description="Prompt length in tokens, the shared prefix included.")
    max_new_tokens: PositiveInt
    count: PositiveInt = Field(1, description="How many such requests (each with its own random suffix).")


class Workload(_ScenarioPart):
    seed: int = Field(0, description="Seeds every prompt token, shared prefixes included.")
    shared_prefixes: dict[PrefixName, PositiveInt] = Field(
        default_factory=dict, description="Prefix name -> length in tokens.")
    requests: list[RequestSpec] = Field(min_length=1)
    concurrency: PositiveInt = Field(1, description="Requests in flight at once.")


class FaultTarget(_ScenarioPart):
    """Where the fault lands; a key left out lets the engine choose its default for the kind."""

    group: Literal["full", "swa"] | None = None
    request: Literal["running", "finished"] | None = None
    slot: Literal["used", "cached_unused", "post_forward"] | None = None
    node: Literal["deepest_locked", "any_unlocked"] | None = None
    position: Literal["in_window", "out_of_window"] | None = None


class Fault(_ScenarioPart):
    """When and where to corrupt; sent as-is (``None`` keys dropped) to ``POST /kv_canary/inject``."""

    kind: FaultKind
    at_step: NonNegativeInt | None = Field(None, description="Engine forward at which to inject.")
    after_warmup_steps: NonNegativeInt | None = Field(
        None, description="Forwards after the engine's warm-up at which to inject.")
    probability: float | None = Field(
        None, gt=0, le=1, description="Chance per forward to inject (needs seed).")
    seed: int | None = Field(None, description="Seed of the probability draw.")
    count: PositiveInt = Field(1, description="How many injections.")
    target: FaultTarget = Field(default_factory=FaultTarget)

    @property
    def injects(self) -> bool:
        return self.kind != "none"

    def request_body(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude_none=True)


class ViolationPattern(_ScenarioPart):
    """Must match at least one logged violation; '|' separates alternatives, '*' is a glob."""

    launch_tag: PatternText = "*"
    fail_reason: PatternText = Field("*", description="A line matches if any of its reasons does.")


class SwaDivergenceExpectation(_ScenarioPart):
    """Checked on the last kv_canary_swa_divergence line, in modes with FULL and SWA groups."""

    forward_ct: ComparisonText | None = None
    verify_full: ComparisonText | None = None
    verify_swa: ComparisonText | None = None
    swa_full_idx_divergence: ComparisonText | None = None
    swa_out_of_window_tokens: ComparisonText | None = None
    verify_swa_lt_verify_full: bool | None = Field(
        None, description="true: verify_swa < verify_full; false: verify_swa >= verify_full.")

    def comparisons(self) -> dict[str, str]:
        return {name: text for name, text in self.model_dump(exclude_none=True).items()
                if name != "verify_swa_lt_verify_full"}


class Expectations(_ScenarioPart):
    detected: bool | None = Field(
        None, description="Required with a fault; false (zero violations) for baselines.")
    within_steps: NonNegativeInt | None = Field(
        None, description="Forwards after the injection by which a violation must be logged.")
    violations: list[ViolationPattern] = Field(default_factory=list)
    swa_divergence: SwaDivergenceExpectation | None = None


class Scenario(_ScenarioPart):
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
