"""The engine settings: declared once here, read by the scenario validator (a scenario's ``engine``
mapping), the harness (the server command line) and the mock server (its flags and its config).

Each setting ``name`` is the server flag ``--name-with-dashes``; ``None`` means the flag is not
passed and the server's own default applies. ``engine_setting_problems`` holds the rules that tie
settings to each other and to the mode, which the engine checks at start-up.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Literal

import annotated_types
from pydantic import Field

from kv_canary_contract.bounds import (
    MAX_FORWARDS,
    MAX_JITTER_US,
    MAX_PAGE_SIZE,
    MAX_REQUESTS,
    MAX_SPECULATIVE_STEPS,
    MAX_TOKENS,
    MOCK_MODEL_MAX_RANKS,
    SEED_MAX,
    SEED_MIN,
)
from kv_canary_contract.engine_bugs import bug_problems
from kv_canary_contract.modes import MODES, ModelMode
from kv_canary_contract.problems import ContractModel, ContractProblem

RealKv = Literal["none", "partial", "all"]
ScenarioCanaryMode = Literal["log", "raise"]  # a scenario needs the canary on; the server also takes none
Disaggregation = Literal["none", "prefill_decode"]


class EngineSettings(ContractModel):
    """Engine settings, each the server flag of the same name; an optional one left out (null) is
    not passed, so the server's own default applies."""

    page_size: int = Field(default=1, ge=1, le=MAX_PAGE_SIZE, description="Tokens per KV page.")
    max_total_tokens: int = Field(
        default=4096, ge=1, le=MAX_TOKENS, description="KV slots in the full pool; a multiple of page_size."
    )
    swa_window: int = Field(
        default=64,
        ge=1,
        le=MAX_TOKENS,
        description="Sliding-window size of SWA layers (modes swa, dsv4; in dsv4 at least its compress ratio, 4).",
    )
    sweep_interval: int = Field(
        default=0, ge=0, le=MAX_FORWARDS, description="Forwards between radix sweeps; 0 = no sweep."
    )
    real_kv: RealKv = Field(
        default="partial", description="How much of each slot's real K/V bytes the TAIL record hashes."
    )
    canary_mode: ScenarioCanaryMode = Field(default="log", description="log: report violations; raise: also error.")
    max_running_requests: int | None = Field(default=None, ge=1, le=MAX_REQUESTS, description="Batch size cap.")
    chunked_prefill_size: int | None = Field(default=None, ge=1, le=MAX_TOKENS, description="Prefill chunk in tokens.")
    seed: int | None = Field(
        default=None, ge=SEED_MIN, le=SEED_MAX, description="Seeds the engine's model weights and token sampling."
    )
    stats_interval: int | None = Field(
        default=None, ge=0, le=MAX_FORWARDS, description="Forwards between kv_canary_stats lines; 0 = off."
    )
    swa_divergence_interval: int | None = Field(
        default=None,
        ge=0,
        le=MAX_FORWARDS,
        description="Forwards between kv_canary_swa_divergence lines; 0 = off. The harness passes 1 when a "
        "scenario sets expect.swa_divergence and not this.",
    )
    disaggregation: Disaggregation | None = Field(
        default=None,
        description="prefill_decode: a prefill engine computes each prompt and moves its KV and canary records, "
        "page by page, into slots a decode engine allocated, as SGLang's PD disaggregation does; none: one engine.",
    )
    host_tier_tokens: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TOKENS,
        description="Host KV slots the radix cache offloads evicted prefixes to, with their canary records, and "
        "loads back on a prefix hit, as SGLang's hierarchical cache does; 0 = no host tier; a multiple of page_size.",
    )
    speculative_num_steps: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SPECULATIVE_STEPS,
        description="EAGLE-style speculative decoding: draft tokens per round, written into the KV cache by the "
        "target's verify forward and then accepted or rolled back; 0 = off.",
    )
    # At most 2 each: the mock models have 2 attention heads, and 2 layers in modes mha and dsv4.
    tp: int | None = Field(
        default=None,
        ge=1,
        le=MOCK_MODEL_MAX_RANKS,
        description="Tensor-parallel ranks, each holding a slice of every layer's KV heads and its own canary.",
    )
    pp: int | None = Field(
        default=None,
        ge=1,
        le=MOCK_MODEL_MAX_RANKS,
        description="Pipeline-parallel ranks, each holding its own layers' KV and its own canary.",
    )
    overlap_schedule: bool | None = Field(
        default=None,
        description="Prepare each forward before the previous forward's results are processed, as SGLang's "
        "overlap scheduler does (the server's default: off).",
    )
    new_token_ratio: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Share of a request's max_new_tokens whose pages admission reserves; below 1 admits more "
        "requests, and a decode that runs out of pages retracts one (the server's default: 1, never retract).",
    )
    bugs: list[str] | None = Field(
        default=None,
        description="Engine bug modes to turn on (docs/FAULTS.md, Bug modes); the flag takes them comma-separated.",
    )
    check_lost_writes: bool | None = Field(
        default=None,
        description="Mark every new slot's K/V rows before the model runs and report a row left marked "
        "(lost_write): a K/V write the forward skipped or sent elsewhere. Needs real_kv partial or all.",
    )
    jitter_max_us: int | None = Field(
        default=None,
        ge=0,
        le=MAX_JITTER_US,
        description="Largest random delay, in microseconds, the engine injects between scheduling, the forward, "
        "K/V writes and frees, and the HTTP layer before and after each request; 0 = off.",
    )
    jitter_seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX, description="Seeds the jitter's delays.")


# The settings the canary reads (the server passes them to its CanaryConfig); the rest are the engine's.
CANARY_SETTINGS = (
    "sweep_interval",
    "real_kv",
    "canary_mode",
    "stats_interval",
    "swa_divergence_interval",
    "check_lost_writes",
)
# Engine features a fault kind may need (FaultKindRule.needs_setting): each setting's value when the
# feature is off, and how a message asks for it.
FEATURE_SETTINGS: Mapping[str, tuple[object, str]] = MappingProxyType(
    {
        "disaggregation": ("none", "disaggregation: prefill_decode"),
        "host_tier_tokens": (0, "host_tier_tokens > 0"),
        "speculative_num_steps": (0, "speculative_num_steps > 0"),
    }
)


def feature_enabled(settings: Mapping[str, object], name: str) -> bool:
    """Whether the engine feature behind setting ``name`` is on (a value left out or None: off)."""
    off, _ = FEATURE_SETTINGS[name]
    value = settings.get(name)
    return value is not None and value != off


def rank_count(values: Mapping[str, object]) -> int:
    """The engine's ranks (tp x pp) for settings that passed ``engine_setting_problems``; 1 when neither is set."""
    tp, pp = values.get("tp"), values.get("pp")
    return (tp if isinstance(tp, int) else 1) * (pp if isinstance(pp, int) else 1)


def setting_flag(name: str) -> str:
    """The server flag of a setting: page_size -> --page-size."""
    return "--" + name.replace("_", "-")


def setting_choices(name: str) -> tuple[str, ...]:
    """The values a string setting takes (its Literal, optional or not); empty for other settings."""
    annotation = EngineSettings.model_fields[name].annotation
    literals = [arg for arg in typing.get_args(annotation) if typing.get_origin(arg) is Literal] or [annotation]
    return tuple(value for literal in literals for value in typing.get_args(literal) if isinstance(value, str))


def setting_argument(value: object) -> str | None:
    """A setting's value as its flag's argument; None: pass no flag (unset, or an empty list)."""
    if value is None or value == []:
        return None
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def setting_bounds(name: str) -> tuple[int | float | None, int | float | None]:
    """(least, greatest) value of a numeric setting, as declared on ``EngineSettings``."""
    least = greatest = None
    for constraint in EngineSettings.model_fields[name].metadata:
        if isinstance(constraint, annotated_types.Ge):
            least = typing.cast(int | float, constraint.ge)
        elif isinstance(constraint, annotated_types.Le):
            greatest = typing.cast(int | float, constraint.le)
    return least, greatest


def engine_setting_problems(
    values: Mapping[str, object], *, mode: ModelMode, compress_ratio: int | None = None
) -> list[ContractProblem]:
    """Every reason the engine would refuse these settings in ``mode`` at start-up.

    ``values`` maps setting names to values (missing ones take ``EngineSettings``' defaults);
    integers are also checked against their bounds. ``compress_ratio`` overrides the ratio of a
    mode that has a compressed pool (an engine built with another one); other modes ignore it.
    """
    settings = {name: field.default for name, field in EngineSettings.model_fields.items()} | dict(values)
    problems = list(_bound_problems(values))
    if not problems:
        ratio = MODES[mode].compress_ratio
        if ratio is not None and compress_ratio is not None:
            ratio = compress_ratio
        problems += _cross_problems(settings, mode=mode, compress_ratio=ratio)
    return problems


def _bound_problems(values: Mapping[str, object]) -> Iterator[ContractProblem]:
    for name, value in values.items():
        if name not in EngineSettings.model_fields or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        least, greatest = setting_bounds(name)
        if least is not None and value < least:
            yield ContractProblem(loc=(name,), message=f"{value} is too small: must be >= {least}")
        if greatest is not None and value > greatest:
            yield ContractProblem(loc=(name,), message=f"{value} is too large: must be <= {greatest}")


def _cross_problems(
    settings: Mapping[str, object], *, mode: ModelMode, compress_ratio: int | None
) -> Iterator[ContractProblem]:
    page_size = typing.cast(int, settings["page_size"])
    max_total_tokens = typing.cast(int, settings["max_total_tokens"])
    swa_window = typing.cast(int, settings["swa_window"])
    if max_total_tokens % page_size:
        below = max_total_tokens - max_total_tokens % page_size
        yield ContractProblem(
            loc=("max_total_tokens",),
            message=f"{max_total_tokens} is not a multiple of page_size ({page_size}): the pool is whole pages; "
            f"use {below or page_size} or {below + page_size}",
        )
    yield from _rank_problems(settings)
    yield from bug_problems(typing.cast("list[str]", settings["bugs"] or []), mode=mode, settings=settings)
    if settings["check_lost_writes"] and settings["real_kv"] == "none":
        yield ContractProblem(
            loc=("check_lost_writes",),
            message="the lost-write check reads the K/V rows the real-KV hash reads, and real_kv is none; "
            "set real_kv partial or all, or drop check_lost_writes",
        )
    if compress_ratio is not None and swa_window < compress_ratio:
        yield ContractProblem(
            loc=("swa_window",),
            message=f"{swa_window} is less than mode {mode}'s compress ratio ({compress_ratio}): its compressed "
            "pool pools groups of that many tokens from the window, so the window must hold at least that many",
        )
    host_tier_tokens = settings.get("host_tier_tokens")
    if isinstance(host_tier_tokens, int) and host_tier_tokens % page_size:
        yield ContractProblem(
            loc=("host_tier_tokens",),
            message=f"{host_tier_tokens} is not a multiple of page_size ({page_size}): the host tier holds whole pages",
        )
    features = [name for name in FEATURE_SETTINGS if feature_enabled(settings, name)]
    if len(features) > 1:
        yield ContractProblem(
            loc=(features[1],),
            message=f"{' and '.join(FEATURE_SETTINGS[name][1] for name in features)} are set together; the mock "
            "engine runs one of disaggregation, the host tier and speculative decoding at a time",
        )
    if features:
        new_token_ratio = settings.get("new_token_ratio")
        scheduling = [
            *(["overlap_schedule: true"] if settings.get("overlap_schedule") else []),
            *(
                [f"new_token_ratio: {new_token_ratio}"]
                if isinstance(new_token_ratio, float) and new_token_ratio < 1
                else []
            ),
        ]
        if rank_count(settings) > 1:
            scheduling.append("tp or pp above 1")
        if scheduling:
            yield ContractProblem(
                loc=(features[0],),
                message=f"{FEATURE_SETTINGS[features[0]][1]} is set with {' and '.join(scheduling)}; the mock engine's "
                "features run on its plain scheduler, in one process (no overlap, no retraction, no ranks): "
                "leave those out",
            )


def _rank_problems(settings: Mapping[str, object]) -> Iterator[ContractProblem]:
    tp = typing.cast("int | None", settings["tp"]) or 1
    pp = typing.cast("int | None", settings["pp"]) or 1
    if tp > 1 and pp > 1:
        yield ContractProblem(
            loc=("pp",),
            message=f"tp {tp} with pp {pp}: the mock engine runs one kind of parallelism at a time; "
            "set tp or pp, not both",
        )
