"""The scenario YAML as pydantic models: its shape only.

The ``engine`` and ``fault`` mappings are the contract's (``kv_canary_contract``): the server takes
the same settings as flags and the same fault as its inject body. Whether a well-shaped scenario
can actually be run and checked (a fault its kind or mode cannot take, a pattern that matches no
launch tag, ...) is judged in ``rules.py``, which can name the exact key of each problem; pydantic
validators could only name the enclosing mapping.
"""

from __future__ import annotations

from typing import Annotated, Any

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
    "Abort",
    "EngineSettings",
    "Expectations",
    "Fault",
    "FaultExpectation",
    "ModeOverride",
    "Phase",
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
# Names of requests and faults: they label report rows and SGLang request ids.
LocalName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$", max_length=40)]


class RequestSpec(ContractModel):
    name: LocalName | None = Field(
        None, description="Names the request(s) for workload.phases and their aborts; unique in the workload."
    )
    shared_prefix: PrefixName | None = Field(
        None, description="Name from workload.shared_prefixes the prompt starts with."
    )
    prefix_tokens: int | None = Field(
        None,
        ge=1,
        le=MAX_TOKENS,
        description="How many tokens of the shared prefix the prompt starts with (default: all of it), so that "
        "prompts can share a prefix's first part and diverge where a scenario needs (inside a page, say).",
    )
    prompt_len: int = Field(ge=1, le=MAX_TOKENS, description="Prompt length in tokens, the shared prefix included.")
    max_new_tokens: int = Field(ge=1, le=MAX_TOKENS)
    count: int = Field(
        1, ge=1, le=MAX_REQUESTS, description="How many such requests (each with its own random suffix)."
    )


class Abort(ContractModel):
    """SGLang's ``POST /abort_request`` for a request of the phase, once the phase has run some forwards."""

    request: LocalName = Field(description="The name of a request (count 1) the phase sends.")
    after_steps: int = Field(
        ge=0,
        le=MAX_FORWARDS,
        description="Forwards the engine has run since the phase began; the abort is sent once it has run as many "
        "(the engine keeps stepping meanwhile, so it lands at that forward or a little later: the run records where).",
    )


class Phase(ContractModel):
    """One step of the workload: flush the cache (the engine is idle between phases), then send requests at
    the phase's concurrency, abort some, and wait until every one has answered."""

    send: list[LocalName] = Field(
        default_factory=list,
        description="Names of workload.requests, sent in this order (each with its count); a name sent in two "
        "phases sends the same prompts again.",
    )
    concurrency: int | None = Field(None, ge=1, le=MAX_REQUESTS, description="Default: workload.concurrency.")
    flush_cache: bool = Field(False, description="POST /flush_cache before the phase sends anything.")
    aborts: list[Abort] = Field(default_factory=list)


class Workload(ContractModel):
    seed: int = Field(0, ge=SEED_MIN, le=SEED_MAX, description="Seeds every prompt token, shared prefixes included.")
    shared_prefixes: dict[PrefixName, Annotated[int, Field(ge=1, le=MAX_TOKENS)]] = Field(
        default_factory=dict, description="Prefix name -> length in tokens."
    )
    requests: list[RequestSpec] = Field(min_length=1)
    concurrency: int = Field(1, ge=1, le=MAX_REQUESTS, description="Requests in flight at once.")
    phases: list[Phase] | None = Field(
        None,
        min_length=1,
        description="Run in order, each after the previous one's requests answered. Absent: one phase that sends "
        "every request at workload.concurrency.",
    )


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


class FaultExpectation(ContractModel):
    """What one of several faults (``faults``) must meet, where it differs from the scenario's ``expect``."""

    within_steps: int | None = Field(None, ge=0, le=MAX_FORWARDS)
    violations: list[ViolationPattern] | None = Field(
        None, description="Patterns checked on the violations of this fault's window, instead of expect.violations."
    )


class Expectations(ContractModel):
    detected: bool | None = Field(
        None, description="Required with a fault or an engine bug; false (zero violations) for baselines."
    )
    within_steps: int | None = Field(
        None, ge=0, le=MAX_FORWARDS, description="Forwards after the injection by which a violation must be logged."
    )
    violations: list[ViolationPattern] = Field(default_factory=list)
    swa_divergence: SwaDivergenceExpectation | None = None
    faults: dict[LocalName, FaultExpectation] = Field(
        default_factory=dict, description="Per fault of `faults` (by name): its own bound or patterns."
    )
    harm: bool | None = Field(
        None,
        description="true: some output departs from the clean twin's (or from the token oracle); false: none does. "
        "Absent: not asserted (it is reported).",
    )
    blind_spot: str | None = Field(
        None, min_length=1, description="With detected: false and a fault or bug: why the canary cannot see it."
    )


class ModeOverride(ContractModel):
    """Keys merged over the scenario's own in one mode, where that mode's KV layout truly differs: mappings
    merge key by key, a list or a value replaces, null removes the key."""

    engine: dict[str, Any] | None = None
    fault: dict[str, Any] | None = None
    faults: dict[str, Any] | None = None
    expect: dict[str, Any] | None = None


class Scenario(ContractModel):
    name: KebabName = Field(description="Unique across the library, kebab-case.")
    description: str = Field(min_length=1)
    model_modes: list[ModelMode] = Field(min_length=1)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    workload: Workload
    fault: Fault | None = Field(None, description="Omit (or kind: none) for a clean baseline.")
    faults: dict[LocalName, Fault] | None = Field(
        None, min_length=1, description="Several faults by name, each injected and judged on its own (not with fault)."
    )
    expect: Expectations
    per_mode: dict[ModelMode, ModeOverride] = Field(
        default_factory=dict, description="Overrides for one listed mode (engine, fault, faults, expect)."
    )
    not_applicable: dict[ModelMode, Annotated[str, StringConstraints(min_length=1)]] = Field(
        default_factory=dict,
        description="Why the scenario does not run in a mode it does not list (the report shows 'n/a: reason').",
    )

    def named_faults(self) -> list[tuple[str, Fault]]:
        """The faults that inject something, by name: ``fault`` is named 'fault'."""
        faults = self.faults if self.faults is not None else {"fault": self.fault} if self.fault is not None else {}
        return [(name, fault) for name, fault in faults.items() if fault.injects]

    @property
    def bugs(self) -> tuple[str, ...]:
        """The engine bug modes the scenario turns on (``engine.bugs``)."""
        return tuple(self.engine.bugs or ())

    @property
    def injects_fault(self) -> bool:
        return bool(self.named_faults())

    @property
    def has_culprit(self) -> bool:
        """A fault or an engine bug: something the canary could catch, with a clean twin to compare against."""
        return self.injects_fault or bool(self.bugs)

    @property
    def expects_detection(self) -> bool:
        return bool(self.expect.detected)
