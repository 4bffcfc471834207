"""The injector's routes: the body checked on the HTTP thread, everything else on the scheduler thread."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import pydantic

from kv_canary import KvCanaryViolationError
from kv_canary_contract import Fault
from mock_models.config import EngineConfig, ModelMode
from mock_models.faults.fault_request import FaultRequestError, resolve
from sglang_faults.fault_schedule import LiveFaultInjector
from sglang_faults.http_api import HttpError
from sglang_faults.live_faults import LIVE_APPLIERS
from sglang_faults.scheduler_tasks import SchedulerBusyError, SchedulerTasks

TASK_TIMEOUT_S = 30.0
T = TypeVar("T")


class InjectorService:
    def __init__(self, injector: LiveFaultInjector, tasks: SchedulerTasks, *, canary: Callable[[], Any]) -> None:
        self._injector = injector
        self._tasks = tasks
        self._canary = canary  # () -> the installed ServerCanary, or None
        self._mode = ModelMode.SWA if injector.server.window is not None else ModelMode.MHA

    def inject(self, body: dict) -> dict:
        try:
            request = Fault.model_validate(body)
        except pydantic.ValidationError as error:
            raise HttpError(422, error.errors(include_url=False, include_context=False)) from None
        if request.kind not in LIVE_APPLIERS:
            raise HttpError(400, f"cannot inject {request.kind}: the live SGLang target does not implement it")
        try:
            spec = resolve(request, EngineConfig(model_mode=self._mode), canary_installed=self._canary() is not None)
        except FaultRequestError as error:
            raise HttpError(400, f"cannot inject {request.kind}: {error}") from None
        return {"fault_id": self._on_scheduler(lambda: self._injector.schedule(spec))}

    def injections(self) -> dict:
        return {"injections": self._on_scheduler(self._injector.log.to_json)}

    def violations(self) -> dict:
        def collect() -> dict:
            canary = self._canary()
            if canary is None:
                return {"count": 0, "lines": [], "canary_enabled": False}
            # mode raise: the rows were recorded before it raised, and are answered below
            with contextlib.suppress(KvCanaryViolationError):
                canary.manager.flush()
            lines = [record.format() for record in canary.manager.violations]
            return {
                "count": canary.manager.stats_snapshot()["violations_total"],
                "lines": lines,
                "canary_enabled": True,
            }

        return self._on_scheduler(collect)

    def server_info(self) -> dict:
        def info() -> dict:
            scheduler: Any = self._injector.server.scheduler
            canary = self._canary()
            return {
                "model_mode": self._mode.value,
                "forward_count": self._injector.forward_count,
                "vocab_size": scheduler.model_config.vocab_size,
                "max_context_len": scheduler.model_config.context_len,
                "swa_window": self._injector.server.window,
                "canary_enabled": canary is not None,
                "token_snapshots": canary.tokens.updates if canary is not None else 0,
            }

        return self._on_scheduler(info)

    def _on_scheduler(self, task: Callable[[], T]) -> T:
        try:
            return self._tasks.submit(task, timeout_s=TASK_TIMEOUT_S)
        except SchedulerBusyError as error:
            raise HttpError(503, str(error)) from None
