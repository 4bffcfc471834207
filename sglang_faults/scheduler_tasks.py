"""Work the HTTP thread hands to the scheduler thread, which alone may touch SGLang's state.

The scheduler runs ``run_pending`` between forwards and while idle; ``submit`` blocks the HTTP
thread until its task ran there (or gives up after ``timeout_s``).
"""

from __future__ import annotations

import concurrent.futures
import queue
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class SchedulerBusyError(RuntimeError):
    """The scheduler did not reach a point between forwards in time."""


class SchedulerTasks:
    def __init__(self) -> None:
        self._pending: queue.SimpleQueue[tuple[Callable[[], object], concurrent.futures.Future]] = queue.SimpleQueue()

    def submit(self, task: Callable[[], T], *, timeout_s: float) -> T:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._pending.put((task, future))
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise SchedulerBusyError(
                f"the scheduler did not pick the task up within {timeout_s:.0f}s (it runs tasks between forwards "
                "and while idle)"
            ) from None

    def run_pending(self) -> None:
        """On the scheduler thread: run every task handed over so far."""
        while True:
            try:
                task, future = self._pending.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(task())
            except Exception as error:  # handed back to the HTTP thread, which answers it
                future.set_exception(error)
