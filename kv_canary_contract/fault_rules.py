"""Whether a well-shaped fault can be applied as asked, and its target with the defaults filled in.

``fault_problems`` is the one judge: ``kv-canary validate`` runs it for every mode a scenario lists
(and names the file line of each problem's key); the server runs it for its own mode and answers
400 with every message. Problems of the body alone come first; the mode's rules run only on a
body without them, since they read the target with its defaults resolved.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator, Mapping

from kv_canary_contract.engine_settings import FEATURE_SETTINGS, feature_enabled, rank_count
from kv_canary_contract.fault import TRIGGERS, Fault
from kv_canary_contract.fault_kinds import (
    FAULT_KIND_RULES,
    POSITIONED_SLOTS,
    RANK_KEY,
    SLOT_HOLDER,
    SLOT_OF_REQUEST,
    default_group,
)
from kv_canary_contract.modes import MODEL_MODES, MODES, ModelMode, PoolGroup
from kv_canary_contract.problems import ContractProblem


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ResolvedTarget:
    """A target with every key that applies to the kind filled in (defaults resolved); None: does not apply."""

    group: PoolGroup | None
    request: str | None
    slot: str | None
    node: str | None
    position: str | None
    rank: int | None = None  # the rank whose own state is corrupted; None: rank 0, or a kind of shared state

    def where(self) -> str:
        """Where its slot lies, for messages: 'in the SWA group's window', 'of the full group, in the window'."""
        group = "in the SWA group's window" if self.group == "swa" else f"of the {self.group} group"
        narrowed = {"in_window": ", in the window", "out_of_window": ", out of the window"}.get(self.position or "", "")
        return group + narrowed


def fault_problems(
    fault: Fault,
    *,
    mode: ModelMode,
    canary_on: bool = True,
    engine: Mapping[str, object] | None = None,
    ranks: int | None = None,
) -> list[ContractProblem]:
    """Every reason ``fault`` cannot be applied in ``mode`` by an engine with settings ``engine``
    (``EngineSettings`` names; a setting left out is off) and ``ranks`` ranks (None: from ``engine``'s
    tp and pp); empty when it can."""
    ranks = rank_count(engine or {}) if ranks is None else ranks
    problems = [*_trigger_problems(fault), *_target_key_problems(fault)]
    if not problems and fault.injects:
        target = resolve_target(fault, mode)
        problems += _mode_problems(fault, target, mode, canary_on=canary_on)
        problems += _feature_problems(fault, engine or {})
        if target.rank and target.slot == "cached_unused":
            problems.append(
                ContractProblem(
                    loc=("target", "rank"),
                    message=f"target.rank={target.rank} with slot cached_unused: only rank 0 keeps the radix cache "
                    "the sweep walks (the other ranks run rank 0's forwards), so nothing would read that rank's "
                    "cached slots; use rank 0, or a live slot (slot used)",
                )
            )
        if target.rank is not None and target.rank >= ranks:
            problems.append(
                ContractProblem(
                    loc=("target", "rank"),
                    message=f"target.rank={target.rank}: the engine runs {ranks} rank{'s' if ranks > 1 else ''} "
                    f"(tp x pp); use a rank from 0 to {ranks - 1}",
                )
            )
    return problems


def resolve_target(fault: Fault, mode: ModelMode) -> ResolvedTarget:
    """The target with the kind's defaults filled in; call on a fault ``fault_problems`` accepted."""
    accepted, given = FAULT_KIND_RULES[fault.kind].targets, fault.target

    def value(key: str, default: str | None) -> str | None:
        if key not in accepted:
            return None
        return getattr(given, key) or default

    slot = value("slot", SLOT_OF_REQUEST.get(given.request or "", "used"))
    request = value("request", SLOT_HOLDER.get(slot or "", "running"))
    position = value("position", None) if slot is None or slot in POSITIONED_SLOTS else None
    node = value("node", str(accepted["node"][0]) if "node" in accepted else None)
    group = typing.cast("PoolGroup | None", value("group", default_group(fault.kind, mode)))
    rank = given.rank if FAULT_KIND_RULES[fault.kind].per_rank else None
    return ResolvedTarget(group=group, request=request, slot=slot, node=node, position=position, rank=rank)


def _trigger_problems(fault: Fault) -> Iterator[ContractProblem]:
    if not fault.injects:
        # A baseline: nothing is applied, so when, how often and where are all mistakes.
        for key in sorted(fault.model_fields_set - {"kind"}):
            yield ContractProblem(loc=(key,), message=f"kind 'none' injects nothing; remove {key}")
        return
    given = [key for key in TRIGGERS if getattr(fault, key) is not None]
    if not given:
        yield ContractProblem(
            loc=(), message="say when to inject: at_step, after_warmup_steps, or probability with seed"
        )
    if len(given) > 1:
        yield ContractProblem(loc=(given[1],), message=f"{', '.join(given)} are all set; keep one trigger")
    if fault.probability is not None and fault.seed is None:
        yield ContractProblem(loc=("probability",), message="probability needs a seed, so that a run can be repeated")


def _target_key_problems(fault: Fault) -> Iterator[ContractProblem]:
    if not fault.injects:
        return
    kind, target = fault.kind, fault.target
    accepted = FAULT_KIND_RULES[kind].targets
    for key, value in target.model_dump(exclude_none=True).items():
        if key == RANK_KEY and not FAULT_KIND_RULES[kind].per_rank:
            yield ContractProblem(
                loc=("target", "rank"),
                message=f"target.rank does not apply to {kind}: it corrupts the scheduler's state, which every "
                "rank shares; only kinds that corrupt one rank's own state take a rank",
            )
        elif key not in accepted:
            keys = ", ".join(accepted) or "no target keys"
            yield ContractProblem(
                loc=("target", key), message=f"target.{key} does not apply to {kind}; it accepts {keys}"
            )
        elif value not in accepted[key]:
            yield ContractProblem(
                loc=("target", key),
                message=f"target.{key}={value} does not apply to {kind}; use {' or '.join(map(str, accepted[key]))}",
            )
    request, slot = target.request, target.slot
    if request is not None and slot is not None and SLOT_HOLDER[slot] != request:
        yield ContractProblem(
            loc=("target", "slot"),
            message=f"target.slot={slot} is held by a {SLOT_HOLDER[slot]} request, not a {request} one; "
            f"drop target.request or use slot {SLOT_OF_REQUEST[request]}",
        )
    implied_slot = slot or SLOT_OF_REQUEST.get(request or "")
    if target.position is not None and implied_slot is not None and implied_slot not in POSITIONED_SLOTS:
        yield ContractProblem(
            loc=("target", "position"),
            message="target.position picks a position a running request reads; it does not apply to "
            "slot cached_unused or post_forward",
        )


def _mode_problems(
    fault: Fault, target: ResolvedTarget, mode: ModelMode, *, canary_on: bool
) -> Iterator[ContractProblem]:
    rule, facts = FAULT_KIND_RULES[fault.kind], MODES[mode]
    if rule.needs_swa_pool and not facts.has_swa_pool:
        yield ContractProblem(
            loc=("kind",),
            message=f"{fault.kind} needs an SWA pool (its target.group=swa: mode {mode} has no SWA pool); "
            f"use it in mode {' or '.join(name for name in MODEL_MODES if MODES[name].has_swa_pool)}",
        )
        return
    if target.group == "swa" and not facts.has_swa_pool:
        yield ContractProblem(
            loc=("target", "group"), message=f"target.group=swa: mode {mode} has no SWA pool; use group full"
        )
    elif rule.touches_guarded_state and target.group is not None and target.group not in facts.guarded_groups:
        yield ContractProblem(
            loc=("target", "group"),
            message=f"target.group={target.group}: in mode {mode} the {target.group}-pool slots hold no "
            f"per-slot K/V and no canary records (the canary guards group {', '.join(facts.guarded_groups)} "
            f"only); use group {facts.default_fault_group}",
        )
    if target.position == "out_of_window" and not facts.has_swa_pool:
        yield ContractProblem(
            loc=("target", "position"),
            message=f"target.position=out_of_window: mode {mode} has no sliding window, every position a "
            "request reads is in it; drop the key",
        )
    elif target.position == "out_of_window" and target.group == "swa" and not rule.gives_swa_slots:
        yield ContractProblem(
            loc=("target", "position"),
            message="target.position=out_of_window with group swa: positions out of the window have no SWA "
            "slot; use group full, or remap_swa_slot to give one a slot",
        )
    if rule.needs_canary and not canary_on:
        yield ContractProblem(
            loc=("kind",),
            message=f"{fault.kind}: the canary is off (canary mode none), there are no records to corrupt",
        )


def _feature_problems(fault: Fault, engine: Mapping[str, object]) -> Iterator[ContractProblem]:
    setting = FAULT_KIND_RULES[fault.kind].needs_setting
    if setting is not None and not feature_enabled(engine, setting):
        yield ContractProblem(
            loc=("kind",),
            message=f"{fault.kind} corrupts what only an engine with {FEATURE_SETTINGS[setting][1]} has; set it "
            "in the scenario's engine (the server's flag)",
        )
