"""Scheduled faults in a live server: when each is due, applying it, retrying it, logging it.

The same machine as the mock engine's injector (mock_models/faults/injector.py): the same
triggers (``Trigger``), the same retry bound for a fault that finds no target, the same injection
log and ``kv_canary_fault`` lines; only the appliers differ (``live_faults``). Steps count the
canary's forwards (``CanaryManager.forward_count``, restarted when the server starts serving), so
that an injection's step and the violations' steps are on one scale: a fault applied before
forward N and reported at forward N is detected with latency 0. An applier that fails with
anything but ``NoTarget`` is logged with its traceback and resolved ``no_target``: a bug of the
injector must not stop the server under test.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import types
from collections.abc import Callable
from typing import Any

from mock_models.faults.fault_request import FaultSpec
from mock_models.faults.injection_log import InjectionEntry, InjectionLog
from mock_models.faults.injector import NO_TARGET_RETRY_FORWARDS
from mock_models.faults.triggers import Trigger
from sglang_faults.live_faults import LIVE_APPLIERS
from sglang_faults.live_targets import LiveFaultContext, LiveServer, NoTarget

logger = logging.getLogger("kv_canary.fault_injector")


@dataclasses.dataclass(kw_only=True, slots=True)
class _ScheduledFault:
    fault_id: int
    spec: FaultSpec
    trigger: Trigger
    entries: list[InjectionEntry]
    retrying_since: int | None = None
    last_reason: str = ""

    @property
    def next_entry(self) -> InjectionEntry | None:
        return next((entry for entry in self.entries if entry.status == "scheduled"), None)


class LiveFaultInjector:
    """Runs on the scheduler thread only: ``schedule`` and ``before_forward`` change SGLang's state."""

    def __init__(self, server: LiveServer, forward_count: Callable[[], int]) -> None:
        self.server = server
        self._forward_count = forward_count  # () -> forwards run so far, on the canary's scale
        self.log = InjectionLog(logger)
        self._faults: list[_ScheduledFault] = []
        self._fault_ids = itertools.count(1)
        self._last_batch: Any = None

    @property
    def forward_count(self) -> int:
        return self._forward_count()

    def schedule(self, spec: FaultSpec) -> int:
        fault_id = next(self._fault_ids)
        trigger = Trigger(spec, registered_at=self.forward_count)
        given = {key: value for key, value in dataclasses.asdict(spec.target).items() if value is not None}
        target = ", ".join(f"{key}={value}" for key, value in given.items()) or "none"
        entries = [
            self.log.schedule(fault_id, spec.kind, f"due {trigger.describe()}; target {target}")
            for _ in range(spec.count)
        ]
        self._faults.append(_ScheduledFault(fault_id=fault_id, spec=spec, trigger=trigger, entries=entries))
        return fault_id

    def before_forward(self, batch: Any) -> None:
        """Apply what is due right before ``batch`` runs (forward ``forward_count + 1``)."""
        step = self.forward_count + 1
        progress = types.SimpleNamespace(last_forward_batch=self._last_batch, forward_count=step - 1)
        for fault in self._faults:
            if fault.next_entry is None:
                continue
            fault.trigger.observe(progress)  # type: ignore[arg-type]  # reads only these two of the engine
            if fault.retrying_since is None:
                if not fault.trigger.due(step):
                    continue
                fault.retrying_since = step
            self._try_apply(fault, batch, step)
        self._faults = [fault for fault in self._faults if fault.next_entry is not None]

    def after_forward(self, batch: Any) -> None:
        self._last_batch = batch

    def _try_apply(self, fault: _ScheduledFault, batch: Any, step: int) -> None:
        entry = fault.next_entry
        retrying_since = fault.retrying_since
        if entry is None or retrying_since is None:
            return
        index = fault.entries.index(entry)
        seed = fault.spec.seed if fault.spec.seed is not None else fault.fault_id
        context = LiveFaultContext(
            server=self.server,
            batch=batch,
            target=fault.spec.target,
            rng=random.Random(f"{seed}/{index}/{step}"),
            step=step,
        )
        try:
            detail = LIVE_APPLIERS[fault.spec.kind](context)
        except NoTarget as missing:
            fault.last_reason = str(missing)
            if step - retrying_since + 1 < NO_TARGET_RETRY_FORWARDS:
                return
            detail = f"no valid target right before forwards {retrying_since}..{step}: {fault.last_reason}"
            self.log.resolve(entry, "no_target", step=None, detail=detail)
        except Exception as error:
            # A bug of the injector must not stop the server it tests; the run then fails on no_target.
            logger.exception("kv_canary fault injector: applying fault %d failed", fault.fault_id)
            self.log.resolve(entry, "no_target", step=None, detail=f"the injector failed: {error!r}")
        else:
            self.log.resolve(entry, "applied", step=step, detail=detail)
        fault.retrying_since = None
        fault.trigger.resolved(step)
