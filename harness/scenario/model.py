"""The scenario YAML as pydantic models: its shape only.

Whether a well-shaped scenario can actually be checked (a pattern that matches no launch tag,
an SWA target in a mode without SWA, ...) is judged in ``rules.py``, which can name the exact
key of each problem; pydantic validators could only name the enclosing mapping.
"""

from __future__ import annotations

import typing
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# Upper bounds: far above what a scenario for the mock engine needs, low enough that a typo (a
# digit or three too many) is reported by `kv-canary validate`, not by a server that cannot
# allocate its pools or a run that plans a billion requests.
MAX_TOKENS = 1 << 20  # pool slots, windows, chunks, prompt and prefix lengths
MAX_PAGE_SIZE = 1024
MAX_FORWARDS = 10_000_000  # forward counts: intervals, trigger steps, latency bounds
MAX_REQUESTS = 100_000  # requests of a workload (counts summed), running or in flight at once
SEED_RANGE = dict(ge=-(2**63), le=2**63 - 1)  # a 64-bit integer, as torch seeds take

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

    page_size: int = Field(1, ge=1, le=MAX_PAGE_SIZE, description="Tokens per KV page.")
    max_total_tokens: int = Field(4096, ge=1, le=MAX_TOKENS, description="KV slots in the full pool.")
    swa_window: int = Field(64, ge=1, le=MAX_TOKENS, description="Sliding-window size of SWA layers (modes swa, dsv4).")
    sweep_interval: int = Field(0, ge=0, le=MAX_FORWARDS, description="Forwards between radix sweeps; 0 = no sweep.")
    real_kv: Literal["none", "partial", "all"] = Field(
        "partial", description="How much of each slot's real K/V bytes the TAIL record hashes."
    )
    canary_mode: Literal["log", "raise"] = Field("log", description="log: report violations; raise: also error.")
    max_running_requests: int | None = Field(
        None, ge=1, le=MAX_REQUESTS, description="Batch size cap; default: the server's."
    )
    chunked_prefill_size: int | None = Field(
        None, ge=1, le=MAX_TOKENS, description="Prefill chunk in tokens; default: the server's."
    )
    seed: int | None = Field(None, **SEED_RANGE, description="Engine sampling seed; default: the server's.")
    stats_interval: int | None = Field(
        None, ge=0, le=MAX_FORWARDS, description="Forwards between kv_canary_stats lines; default: the server's."
    )
    swa_divergence_interval: int | None = Field(
        None,
        ge=0,
        le=MAX_FORWARDS,
        description="Forwards between kv_canary_swa_divergence lines; default: 1 when "
        "expect.swa_divergence is set, else the server's.",
    )


class RequestSpec(_ScenarioPart):
    shared_prefix: PrefixName | None = Field(
        None, description="Name from workload.shared_prefixes the prompt starts with."
    )
    prompt_len: int = Field(ge=1, le=MAX_TOKENS, description="Prompt length in tokens, the shared prefix included.")
    max_new_tokens: int = Field(ge=1, le=MAX_TOKENS)
    count: int = Field(
        1, ge=1, le=MAX_REQUESTS, description="How many such requests (each with its own random suffix)."
    )


class Workload(_ScenarioPart):
    seed: int = Field(0, **SEED_RANGE, description="Seeds every prompt token, shared prefixes included.")
    shared_prefixes: dict[PrefixName, Annotated[int, Field(ge=1, le=MAX_TOKENS)]] = Field(
        default_factory=dict, description="Prefix name -> length in tokens."
    )
    requests: list[RequestSpec] = Field(min_length=1)
    concurrency: int = Field(1, ge=1, le=MAX_REQUESTS, description="Requests in flight at once.")


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
    at_step: int | None = Field(None, ge=0, le=MAX_FORWARDS, description="Engine forward at which to inject.")
    after_warmup_steps: int | None = Field(
        None, ge=0, le=MAX_FORWARDS, description="Forwards after the engine's warm-up at which to inject."
    )
    probability: float | None = Field(None, gt=0, le=1, description="Chance per forward to inject (needs seed).")
    seed: int | None = Field(None, **SEED_RANGE, description="Seed of the probability draw.")
    count: int = Field(1, ge=1, le=MAX_REQUESTS, description="How many injections.")
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
        None, description="true: verify_swa < verify_full; false: verify_swa >= verify_full."
    )

    def comparisons(self) -> dict[str, str]:
        return {
            name: text
            for name, text in self.model_dump(exclude_none=True).items()
            if name != "verify_swa_lt_verify_full"
        }


class Expectations(_ScenarioPart):
    detected: bool | None = Field(None, description="Required with a fault; false (zero violations) for baselines.")
    within_steps: int | None = Field(
        None, ge=0, le=MAX_FORWARDS, description="Forwards after the injection by which a violation must be logged."
    )
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
