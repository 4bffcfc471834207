"""After a test that started real processes: they are gone, and so is everything they listened on."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path


def process_alive(pid: int) -> bool:
    """Running or stopped; a zombie (exited, not yet reaped) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Only zombies left (their parent will reap them) is as good as gone.
    return any(
        process_alive(int(entry.name))
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _pgid_of(int(entry.name)) == pgid
    )


def port_listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def port_bindable(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def assert_gone(pid: int | None, port: int | None, *, timeout_s: float = 10.0) -> None:
    """The process (and its process group, which the harness gives each server) exited and the port is free."""
    assert pid is not None and port is not None
    deadline = time.monotonic() + timeout_s
    while process_alive(pid) or group_alive(pid) or port_listening(port):
        assert time.monotonic() < deadline, (
            f"pid {pid} alive: {process_alive(pid)}, its group: {group_alive(pid)}, "
            f"port {port} listening: {port_listening(port)}"
        )
        time.sleep(0.05)
    assert port_bindable(port), f"port {port} is still bound"


def _pgid_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None
