"""One server (the mock server, or a live SGLang one) as a child process: its own process group, free port and log file.

The server is stopped (SIGTERM to its group, SIGKILL after a grace period) on every way out of
``with ServerProcess(...)``; ``safety_net`` covers the exits that skip ``finally``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

from harness.runner import safety_net
from harness.runner.errors import ServerStartError
from harness.runner.ports import free_port

READY_LINE = "kv_canary_server listening on http://"
_ADDRESS_IN_USE = re.compile(r"address already in use|errno 98", re.IGNORECASE)
_PORT_ATTEMPTS = 3
LOG_TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class ServerProcess:
    def __init__(
        self,
        *,
        argv_for_port: Callable[[int], list[str]],
        log_path: Path,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 120.0,
        stop_timeout_s: float = 10.0,
        ready_line: str = READY_LINE,
        env: dict[str, str] | None = None,
    ) -> None:
        self._argv_for_port = argv_for_port
        self._ready_line = ready_line
        self._env = env or {}
        self.log_path = log_path
        self.host = host
        self._startup_timeout_s = startup_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._popen: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.pid: int | None = None  # kept after stop, so callers can check the process is gone
        self.exit_code: int | None = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Spawn and wait until healthy; on failure the server is already stopped when this raises."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self.port = free_port(self.host)
            self._spawn(self._argv_for_port(self.port))
            try:
                self._wait_ready()
                return
            except ServerStartError:
                # The free port can be taken between probing and binding; only that is worth a retry.
                lost_port_race = self.has_exited() and _ADDRESS_IN_USE.search(self.log_text()) is not None
                self.stop()
                if not lost_port_race or attempt == _PORT_ATTEMPTS:
                    raise

    def _spawn(self, argv: list[str]) -> None:
        environment = {**os.environ, **self._env, "PYTHONUNBUFFERED": "1"}  # log lines reach the file as they happen
        with self.log_path.open("wb") as log_file:
            self._popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        self.pid = self._popen.pid
        self.exit_code = None
        safety_net.register(self)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._startup_timeout_s
        printed_ready_line = False
        while True:
            if self.has_exited():
                raise ServerStartError(
                    f"server exited before it was ready (command: {self._command()})\n{self.log_tail()}"
                )
            printed_ready_line = printed_ready_line or self._ready_line in self.log_text()
            if printed_ready_line and self._healthy():
                return
            if time.monotonic() > deadline:
                what = (
                    "printed its ready line but GET /health never answered 200"
                    if printed_ready_line
                    else f"never printed '{self._ready_line}...'"
                )
                raise ServerStartError(
                    f"server not ready after {self._startup_timeout_s:.0f}s: it {what} "
                    f"(command: {self._command()})\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.base_url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def has_exited(self) -> bool:
        """Whether the server process has exited, without reaping it (its process group stays addressable)."""
        if self._popen is None or self.exit_code is not None:
            return True
        try:
            state = os.waitid(os.P_PID, self._popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return state is not None

    def wait_for_exit(self, timeout_s: float) -> bool:
        """Whether the server exits within ``timeout_s`` (a dropped connection can beat the exit by a moment)."""
        deadline = time.monotonic() + timeout_s
        while not self.has_exited():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self) -> None:
        """Idempotent: SIGTERM to the group, SIGKILL after the grace period (and to any straggler), reap."""
        popen = self._popen
        if popen is None:
            return
        try:
            if not self.has_exited():
                _signal_group(popen.pid, signal.SIGTERM)
                self.wait_for_exit(self._stop_timeout_s)
            # The leader is not reaped yet, so its group id cannot have been reused: safe to kill stragglers.
            _signal_group(popen.pid, signal.SIGKILL)
            self.exit_code = popen.wait()
        finally:
            self._popen = None
            safety_net.unregister(self)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        tail = self.log_text().splitlines()[-lines:]
        header = f"--- last {len(tail)} lines of {self.log_path} ---"
        return "\n".join([header, *tail]) if tail else f"--- {self.log_path} is empty ---"

    def _command(self) -> str:
        popen = self._popen
        if popen is None:
            return "(not started)"
        args = popen.args
        return " ".join(map(str, args)) if isinstance(args, list | tuple) else str(args)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """In the child: get SIGTERM when the harness dies, even by SIGKILL (Linux only).

    The kernel ties this to the thread that forked, so servers must be started from a thread that
    outlives them (the runner and the plugin start them from the main thread).
    """
    if _LIBC is None:
        return None

    def set_parent_death_signal() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the harness died before prctl took effect
            os._exit(1)

    return set_parent_death_signal
