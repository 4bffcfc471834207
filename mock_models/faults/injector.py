"""The fault injector: scheduled faults, applied on the engine thread right before a forward.

``FaultInjector.install(engine)`` adds a batch hook and a step hook. Before every forward it asks
each pending fault's trigger whether an application is due, and applies it to the engine's
state; the application is recorded at ``step = forward_count + 1``, the forward it precedes, so a
violation that forward reports counts as detected with latency 0. Most kinds are applied once
that forward is scheduled, to what it reads (``targets.py``); ``stale_prefix``, whose reader is a
waiting request's admission, and the engine features' kinds that arm a transfer, a load-back or a
draft, right before scheduling (``APPLIED_BEFORE_SCHEDULING``).

A fault with ``count: N`` gets the entry of its next application only when the previous one
resolves, so a huge ``count`` costs nothing until its applications happen (one per forward).

An application that finds no valid target (no running request yet, no unlocked radix node, ...)
is retried before each following forward, for ``NO_TARGET_RETRY_FORWARDS`` forwards in all; then
it is recorded as ``no_target`` with the last reason. Workloads change shape quickly (requests
arrive, finish, prefill in chunks), so a target missing at the trigger is often there a few
forwards later; a bound keeps a fault that can never land from waiting for ever. Every change of
status logs one ``kv_canary_fault`` line (``injection_log.py``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
from collections.abc import Callable

from mock_models.engine.engine import Engine
from mock_models.engine.scheduler import ScheduledBatch
from mock_models.faults.canary_records import corrupt_canary
from mock_models.faults.canary_writes import skip_canary_write
from mock_models.faults.double_free import double_free
from mock_models.faults.fault_request import FaultSpec
from mock_models.faults.host_tier_faults import host_copy_overwrite, restore_wrong_slots, stale_swa_translation
from mock_models.faults.injection_log import InjectionEntry, InjectionLog
from mock_models.faults.kv_bytes import corrupt_kv_bytes
from mock_models.faults.kv_writes import lost_write, misdirected_write
from mock_models.faults.radix_faults import evict_radix_node, stale_prefix
from mock_models.faults.slot_maps import remap_swa_slot, req_to_token_remap
from mock_models.faults.speculative_faults import draft_position_shift
from mock_models.faults.targets import FaultContext, NoTarget
from mock_models.faults.token_swap import swap_next_token
from mock_models.faults.transfer_faults import transfer_drop_group, transfer_foreign_pages, transfer_misorder_pages
from mock_models.faults.triggers import Trigger

logger = logging.getLogger("mock_models.faults")

NO_TARGET_RETRY_FORWARDS = 32

Applier = Callable[[FaultContext], str]  # applies the fault, returns its detail; raises NoTarget


def _nothing(_context: FaultContext) -> str:
    return "kind none: nothing corrupted (baseline)"


APPLIERS: dict[str, Applier] = {
    "none": _nothing,
    "corrupt_kv_bytes": corrupt_kv_bytes,
    "corrupt_canary": corrupt_canary,
    "req_to_token_remap": req_to_token_remap,
    "evict_radix_node": evict_radix_node,
    "double_free": double_free,
    "remap_swa_slot": remap_swa_slot,
    "stale_prefix": stale_prefix,
    "swap_next_token": swap_next_token,
    "skip_canary_write": skip_canary_write,
    "lost_write": lost_write,
    "misdirected_write": misdirected_write,
    "transfer_drop_group": transfer_drop_group,
    "transfer_misorder_pages": transfer_misorder_pages,
    "transfer_foreign_pages": transfer_foreign_pages,
    "restore_wrong_slots": restore_wrong_slots,
    "stale_swa_translation": stale_swa_translation,
    "host_copy_overwrite": host_copy_overwrite,
    "draft_position_shift": draft_position_shift,
}
# Kinds whose corruption is read through admission (a waiting request's prefix match, a load-back
# from the host tier) or that arm what scheduling does next (a prefill-to-decode transfer, the
# drafting of a verify window): applied in the step hook, before the forward is scheduled; every
# other kind once it is scheduled.
APPLIED_BEFORE_SCHEDULING = frozenset(
    {
        "stale_prefix",
        "transfer_drop_group",
        "transfer_misorder_pages",
        "transfer_foreign_pages",
        "restore_wrong_slots",
        "host_copy_overwrite",
        "draft_position_shift",
    }
)


@dataclasses.dataclass(kw_only=True, slots=True)
class _ScheduledFault:
    fault_id: int
    spec: FaultSpec
    trigger: Trigger
    next_entry: InjectionEntry | None  # the application to come; None once all ``count`` resolved
    resolved: int = 0  # applications resolved so far
    retrying_since: int | None = None  # the forward the current application was first tried at
    last_reason: str = ""


class FaultInjector:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.log = InjectionLog(logger)
        self._faults: list[_ScheduledFault] = []
        self._fault_ids = itertools.count(1)

    @classmethod
    def install(cls, engine: Engine) -> FaultInjector:
        injector = cls(engine)
        engine.add_step_hook(injector.before_scheduling)
        engine.add_batch_hook(injector.before_forward)
        return injector

    def schedule(self, spec: FaultSpec) -> int:
        """Register a fault (call on the engine thread, between forwards); returns its fault_id."""
        fault_id = next(self._fault_ids)
        trigger = Trigger(spec, registered_at=self.engine.forward_count)
        fault = _ScheduledFault(fault_id=fault_id, spec=spec, trigger=trigger, next_entry=None)
        self._open_next_entry(fault)
        self._faults.append(fault)
        return fault_id

    def before_scheduling(self, engine: Engine) -> None:
        """The step hook: apply the due faults of kinds read through admission."""
        self._apply_due(engine, batch=None)

    def before_forward(self, engine: Engine, batch: ScheduledBatch) -> None:
        """The batch hook: apply the other due faults, to what the scheduled forward reads."""
        self._apply_due(engine, batch=batch)

    def _apply_due(self, engine: Engine, *, batch: ScheduledBatch | None) -> None:
        step = engine.forward_count + 1
        for fault in self._faults:
            entry = fault.next_entry
            if entry is None or (fault.spec.kind in APPLIED_BEFORE_SCHEDULING) != (batch is None):
                continue
            fault.trigger.observe(engine)
            if fault.retrying_since is None:
                if not fault.trigger.due(step):
                    continue
                fault.retrying_since = step
            self._try_apply(fault, entry, step=step, since=fault.retrying_since, batch=batch)
        self._faults = [fault for fault in self._faults if fault.next_entry is not None]

    def _try_apply(
        self, fault: _ScheduledFault, entry: InjectionEntry, *, step: int, since: int, batch: ScheduledBatch | None
    ) -> None:
        """Apply ``entry``, tried first right before forward ``since``, now right before ``step``."""
        seed = fault.spec.seed if fault.spec.seed is not None else fault.fault_id
        context = FaultContext(
            engine=self.engine,
            target=fault.spec.target,
            step=step,
            rng=random.Random(f"{seed}/{fault.resolved}/{step}"),
            batch=batch,
        )
        try:
            detail = APPLIERS[fault.spec.kind](context)
        except NoTarget as missing:
            fault.last_reason = str(missing)
            if step - since + 1 < NO_TARGET_RETRY_FORWARDS:
                return
            self.log.resolve(
                entry,
                "no_target",
                step=None,
                detail=f"no valid target right before forwards {since}..{step}: {fault.last_reason}",
            )
        else:
            self.log.resolve(entry, "applied", step=step, detail=detail)
        fault.retrying_since = None
        fault.trigger.resolved(step)
        fault.resolved += 1
        self._open_next_entry(fault)

    def _open_next_entry(self, fault: _ScheduledFault) -> None:
        if fault.resolved == fault.spec.count:
            fault.next_entry = None
            return
        detail = f"due {fault.trigger.describe()}; target {_describe_target(fault.spec)}"
        if fault.spec.count > 1:
            detail += f"; application {fault.resolved + 1} of {fault.spec.count}"
        fault.next_entry = self.log.schedule(fault.fault_id, fault.spec.kind, detail)


def _describe_target(spec: FaultSpec) -> str:
    given = {key: value for key, value in dataclasses.asdict(spec.target).items() if value is not None}
    return ", ".join(f"{key}={value}" for key, value in given.items()) or "none"
