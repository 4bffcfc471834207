"""The body of ``POST /kv_canary/inject``: its shape (pydantic, answered 422) and whether it makes
sense for this kind and this engine (``resolve``, answered 400), with the target defaults filled in.

The shape is the scenario YAML's ``fault`` mapping (DESIGN.md); which target keys each kind
accepts is the table in docs/FAULTS.md, kept here in ``_ACCEPTED``.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

from mock_models.config import EngineConfig, ModelMode

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
Group = Literal["full", "swa"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class FaultTargetBody(_Body):
    group: Group | None = None
    request: Literal["running", "finished"] | None = None
    slot: Literal["used", "cached_unused", "post_forward"] | None = None
    node: Literal["deepest_locked", "any_unlocked"] | None = None
    position: Literal["in_window", "out_of_window"] | None = None


class FaultRequestBody(_Body):
    kind: FaultKind
    at_step: NonNegativeInt | None = Field(None, description="apply right before forward N")
    after_warmup_steps: NonNegativeInt | None = Field(
        None, description="apply right before the (N+1)-th forward after the warm-up (the first DECODE forward)"
    )
    probability: float | None = Field(None, gt=0, le=1, description="chance per forward after the warm-up")
    seed: int | None = Field(None, description="seeds the probability draws and the target choices")
    count: PositiveInt = 1
    target: FaultTargetBody = Field(default_factory=FaultTargetBody)


class FaultRequestError(ValueError):
    """A well-shaped body that cannot be applied as asked; the message names the key and the fix."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Target:
    """A target with every key that applies to the kind filled in (defaults resolved); None: does not apply."""

    group: Group | None
    request: str | None
    slot: str | None
    node: str | None
    position: str | None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class FaultSpec:
    kind: str
    at_step: int | None
    after_warmup_steps: int | None
    probability: float | None
    seed: int | None
    count: int
    target: Target


# kind -> target key -> accepted values; the first value is the default ("group" is resolved per mode).
_ACCEPTED: dict[str, dict[str, tuple[str, ...]]] = {
    "none": {},
    "corrupt_kv_bytes": {
        "group": ("full", "swa"),
        "slot": ("used", "cached_unused", "post_forward"),
        "request": ("running", "finished"),
        "position": ("in_window", "out_of_window"),
    },
    "corrupt_canary": {
        "group": ("full", "swa"),
        "slot": ("used", "cached_unused"),
        "request": ("running", "finished"),
        "position": ("in_window", "out_of_window"),
    },
    "req_to_token_remap": {
        "group": ("full", "swa"),
        "request": ("running",),
        "position": ("in_window", "out_of_window"),
    },
    "evict_radix_node": {"group": ("full", "swa"), "node": ("deepest_locked", "any_unlocked"), "request": ("running",)},
    "double_free": {
        "group": ("full", "swa"),
        "slot": ("used", "cached_unused"),
        "request": ("running", "finished"),
        "position": ("in_window", "out_of_window"),
    },
    "remap_swa_slot": {"group": ("swa",), "request": ("running",), "position": ("in_window", "out_of_window")},
    "stale_prefix": {"group": ("full", "swa"), "node": ("any_unlocked",)},
    "swap_next_token": {"request": ("running",)},
}
# Keys whose default is not "the first accepted value".
_SLOT_OF_REQUEST = {"running": "used", "finished": "cached_unused"}
_REQUEST_OF_SLOT = {"used": "running", "post_forward": "running", "cached_unused": "finished"}
# Kinds that touch K/V bytes or canary records of the named group: that group must hold them.
_NEEDS_GUARDED_GROUP = ("corrupt_kv_bytes", "corrupt_canary")


def default_group(mode: ModelMode) -> Group:
    """The group a fault lands in when the target names none: FULL where the canary guards it."""
    return "swa" if mode is ModelMode.DSV4 else "full"


def resolve(body: FaultRequestBody, config: EngineConfig, *, canary_installed: bool) -> FaultSpec:
    """The spec to schedule, or FaultRequestError listing every problem with the body."""
    problems = [*_trigger_problems(body), *_target_key_problems(body)]
    if not problems:
        target = _with_defaults(body, config.model_mode)
        problems += _engine_problems(body.kind, target, config, canary_installed=canary_installed)
    if problems:
        raise FaultRequestError("; ".join(problems))
    return FaultSpec(
        kind=body.kind,
        at_step=body.at_step,
        after_warmup_steps=body.after_warmup_steps,
        probability=body.probability,
        seed=body.seed,
        count=body.count,
        target=target,
    )


def _trigger_problems(body: FaultRequestBody) -> list[str]:
    given = [key for key in ("at_step", "after_warmup_steps", "probability") if getattr(body, key) is not None]
    problems = []
    if not given and body.kind != "none":
        problems.append("say when to inject: at_step, after_warmup_steps, or probability with seed")
    if len(given) > 1:
        problems.append(f"{', '.join(given)} are all set; keep one trigger")
    if body.probability is not None and body.seed is None:
        problems.append("probability needs a seed, so that a run can be repeated")
    return problems


def _target_key_problems(body: FaultRequestBody) -> list[str]:
    accepted = _ACCEPTED[body.kind]
    problems = []
    for key, value in body.target.model_dump(exclude_none=True).items():
        if key not in accepted:
            keys = ", ".join(accepted) or "no target keys"
            problems.append(f"target.{key} does not apply to {body.kind}; it accepts {keys}")
        elif value not in accepted[key]:
            problems.append(f"target.{key}={value} does not apply to {body.kind}; use {' or '.join(accepted[key])}")
    request, slot = body.target.request, body.target.slot
    if request is not None and slot is not None and _REQUEST_OF_SLOT[slot] != request:
        problems.append(
            f"target.slot={slot} is held by a {_REQUEST_OF_SLOT[slot]} request, not a {request} one; "
            f"drop target.request or use slot {_SLOT_OF_REQUEST[request]}"
        )
    if body.target.position is not None and (slot or _SLOT_OF_REQUEST.get(request or "")) in (
        "cached_unused",
        "post_forward",
    ):
        problems.append(
            "target.position picks a position a running request reads; it does not apply to "
            "slot cached_unused or post_forward"
        )
    return problems


def _with_defaults(body: FaultRequestBody, mode: ModelMode) -> Target:
    accepted, given = _ACCEPTED[body.kind], body.target

    def value(key: str, default: str | None) -> str | None:
        if key not in accepted:
            return None
        return getattr(given, key) or default

    slot = value("slot", _SLOT_OF_REQUEST.get(given.request or "", "used"))
    request = value("request", _REQUEST_OF_SLOT.get(slot or "", "running"))
    position = value("position", None) if slot in (None, "used") else None
    group = value("group", "swa" if body.kind == "remap_swa_slot" else default_group(mode))
    return Target(
        group=group, request=request, slot=slot, node=value("node", accepted.get("node", (None,))[0]), position=position
    )


def _engine_problems(kind: str, target: Target, config: EngineConfig, *, canary_installed: bool) -> list[str]:
    mode = config.model_mode.value
    problems = []
    if target.group == "swa" and not config.has_swa_pool:
        problems.append(f"target.group=swa: mode {mode} has no SWA pool; use group full")
    if kind in _NEEDS_GUARDED_GROUP and target.group == "full" and config.model_mode is ModelMode.DSV4:
        problems.append(
            "target.group=full: in mode dsv4 the full-pool slots hold no per-slot K/V and no canary "
            "records (only the unguarded compressed pool); use group swa"
        )
    if target.position == "out_of_window" and not config.has_swa_pool:
        problems.append(
            f"target.position=out_of_window: mode {mode} has no sliding window, every position a "
            "request reads is in it; drop the key"
        )
    if target.position == "out_of_window" and target.group == "swa" and kind != "remap_swa_slot":
        problems.append(
            "target.position=out_of_window with group swa: positions out of the window have no SWA "
            "slot; use group full, or remap_swa_slot to give one a slot"
        )
    if kind == "corrupt_canary" and not canary_installed:
        problems.append("corrupt_canary: the canary is off (canary mode none), there are no records to corrupt")
    return problems
