"""Last-resort cleanup: no server outlives the harness, whatever way the harness exits.

``ServerProcess`` stops its server in ``finally``; this module covers the exits that skip
``finally``: interpreter shutdown with a server still registered (atexit) and SIGTERM/SIGHUP to
the harness (turned into ``SystemExit`` so that ``finally`` blocks run). SIGKILL of the harness is
covered in the child itself, by ``PR_SET_PDEATHSIG`` (see ``server_process.py``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import signal
import threading
from collections.abc import Iterator
from typing import Protocol


class Stoppable(Protocol):
    def stop(self) -> None: ...


_live: set[Stoppable] = set()
_lock = threading.Lock()


@functools.cache
def _stop_all_at_exit() -> None:
    """Registers ``stop_all`` with atexit, the first time only."""
    atexit.register(stop_all)


def register(server: Stoppable) -> None:
    with _lock:
        _live.add(server)
        _stop_all_at_exit()


def unregister(server: Stoppable) -> None:
    with _lock:
        _live.discard(server)


def stop_all() -> None:
    with _lock:
        servers = list(_live)
    for server in servers:
        server.stop()


@contextlib.contextmanager
def termination_signals_exit() -> Iterator[None]:
    """For applications that own the process (the CLI): SIGTERM/SIGHUP exit through ``finally`` blocks.

    Only default handlers are replaced, and they are restored on the way out, so a host
    application's own handlers are left alone.
    """
    replaced = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is signal.SIG_DFL:
                replaced[signum] = signal.signal(signum, _raise_system_exit)
    try:
        yield
    finally:
        for signum, previous in replaced.items():
            signal.signal(signum, previous)


def _raise_system_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)
