"""The injector's ``sglang.srt.plugins`` entry point, ``kv_canary_fault_injector``.

Registers nothing unless ``InjectorSettings.from_env`` finds both variables. Then, in the
scheduler process: after ``Scheduler.__init__`` the injector starts listening; around
``Scheduler.run_batch`` it applies the faults due before that forward and runs the HTTP thread's
tasks; around ``Scheduler.on_idle`` it runs them while no batch runs. Run the server with
``--disable-overlap-schedule``: with overlap scheduling a batch is prepared while the previous
forward still runs, so a fault would land in the middle of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sglang_faults.settings import InjectorSettings

logger = logging.getLogger("kv_canary.fault_injector")

_SCHEDULER = "sglang.srt.managers.scheduler.Scheduler"
_RUNNING: dict[str, Any] = {}  # "injector", "tasks", "http": one scheduler per process


def register() -> None:
    settings = InjectorSettings.from_env()
    if settings is None:
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(f"{_SCHEDULER}.__init__", _start(settings), HookType.AFTER)
    HookRegistry.register(f"{_SCHEDULER}.run_batch", _run_batch, HookType.AROUND)
    HookRegistry.register(f"{_SCHEDULER}.on_idle", _on_idle, HookType.AROUND)


def _start(settings: InjectorSettings) -> Callable[..., None]:
    def start_injector(_result: Any, scheduler: Any, *args: Any, **kwargs: Any) -> None:
        from kv_canary.integrations.sglang.plugin import installed_canary
        from sglang_faults.fault_schedule import LiveFaultInjector
        from sglang_faults.http_api import InjectorHttpServer
        from sglang_faults.live_targets import LiveServer
        from sglang_faults.scheduler_tasks import SchedulerTasks
        from sglang_faults.service import InjectorService

        model_runner = scheduler.tp_worker.model_runner

        def canary() -> Any:
            return installed_canary(model_runner)

        def forward_count() -> int:
            found = canary()
            return found.manager.forward_count if found is not None else 0

        server = LiveServer(scheduler=scheduler, window=getattr(model_runner, "sliding_window_size", None))
        injector = LiveFaultInjector(server, forward_count)
        tasks = SchedulerTasks()
        http = InjectorHttpServer(settings, InjectorService(injector, tasks, canary=canary))
        http.start()
        _RUNNING.update(injector=injector, tasks=tasks, http=http)
        logger.warning(
            "kv_canary fault injector listening on http://%s:%d: a test tool that corrupts this server's memory "
            "on request",
            *http.address,
        )

    return start_injector


def _run_batch(original: Callable[..., Any], scheduler: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
    injector = _RUNNING.get("injector")
    if injector is None:
        return original(scheduler, batch, *args, **kwargs)
    tasks = _RUNNING["tasks"]
    tasks.run_pending()
    injector.before_forward(batch)
    result = original(scheduler, batch, *args, **kwargs)
    injector.after_forward(batch)
    return result


def _on_idle(original: Callable[..., Any], scheduler: Any, *args: Any, **kwargs: Any) -> Any:
    tasks = _RUNNING.get("tasks")
    if tasks is not None:
        tasks.run_pending()
    return original(scheduler, *args, **kwargs)
