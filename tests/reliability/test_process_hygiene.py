"""No orphans: whatever way a run ends, its server processes are gone and their ports are free.

Real processes throughout: `kv-canary run` as a subprocess against the real mock server, signals
sent from outside, and a pytest-xdist worker that dies with a server running. Every test finds
the server's pid and port in its log and asserts both are gone afterwards.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.runner import ServerProcess
from harness.runner.errors import ServerStartError
from harness.runner.server_command import DEFAULT_SERVER_COMMAND
from tests.reliability.process_checks import assert_gone, process_alive

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE_SERVER = [sys.executable, str(REPO_ROOT / "tests" / "unit" / "harness" / "fake_server.py")]
# Long enough to be interrupted: 24 requests of 200 new tokens on one core take a minute or more.
LONG_SCENARIO = """\
name: long-baseline
description: A clean run long enough to be interrupted.
model_modes: [mha]
engine: {page_size: 1, max_total_tokens: 4096, sweep_interval: 4}
workload:
  requests:
    - {prompt_len: 32, max_new_tokens: 200, count: 24}
  concurrency: 4
expect:
  detected: false
"""


def start_run(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    scenario = tmp_path / "long-baseline.yaml"
    scenario.write_text(LONG_SCENARIO)
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "run", str(scenario), "--report", str(tmp_path / "run"), *extra],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wait_for_server(tmp_path: Path, run: subprocess.Popen, *, generating: bool = True) -> tuple[int, int]:
    """(pid, port) of the run's server, once it serves (and, with ``generating``, once it computes)."""
    deadline = time.monotonic() + 120
    log = tmp_path / "run" / "logs" / "long-baseline--mha.log"
    while time.monotonic() < deadline:
        assert run.poll() is None, run.communicate()
        text = log.read_text() if log.exists() else ""
        pid = re.search(r"Started server process \[(\d+)\]", text)
        port = re.search(r"kv_canary_server listening on http://[\d.]+:(\d+)", text)
        if pid and port and (not generating or "kv_canary_stats" in text or _forwards(int(port[1])) > 10):
            return int(pid[1]), int(port[1])
        time.sleep(0.1)
    raise AssertionError(f"the server never got going:\n{log.read_text() if log.exists() else '(no log)'}")


def _forwards(port: int) -> int:
    import requests

    try:
        return requests.get(f"http://127.0.0.1:{port}/get_server_info", timeout=2).json()["forward_count"]
    except (requests.RequestException, ValueError, KeyError):
        return 0


@pytest.mark.parametrize(
    ("signum", "exit_status"),
    [
        (signal.SIGINT, 130),
        pytest.param(signal.SIGTERM, 128 + signal.SIGTERM, marks=pytest.mark.slow),
        pytest.param(signal.SIGHUP, 128 + signal.SIGHUP, marks=pytest.mark.slow),
    ],
)
def test_a_signal_to_kv_canary_run_mid_scenario_stops_its_server(tmp_path, signum, exit_status):
    run = start_run(tmp_path)
    pid, port = wait_for_server(tmp_path, run)
    run.send_signal(signum)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == exit_status, stderr[-2000:]
    if signum == signal.SIGINT:
        assert "every server was stopped" in stderr
    assert "Traceback" not in stderr
    assert_gone(pid, port)


def test_sigkill_to_kv_canary_run_takes_its_server_with_it(tmp_path):
    run = start_run(tmp_path)
    pid, port = wait_for_server(tmp_path, run, generating=False)
    run.kill()
    run.communicate(timeout=30)
    assert_gone(pid, port)


def test_a_server_killed_mid_scenario_is_reported_with_its_log_tail(tmp_path):
    run = start_run(tmp_path)
    pid, port = wait_for_server(tmp_path, run)
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 1, stderr[-2000:]
    assert "ServerCrashed: the server exited during the run" in stderr + stdout
    assert "--- last" in stderr + stdout and "kv_canary_server listening" in stderr + stdout  # the log tail
    assert_gone(pid, port)


def test_a_real_server_that_fails_at_start_up_is_reported_with_its_log_tail(tmp_path):
    server = ServerProcess(
        argv_for_port=lambda port: [*DEFAULT_SERVER_COMMAND, "--port", str(port), "--page-size", "0"],
        log_path=tmp_path / "bad.log",
        startup_timeout_s=120,
    )
    with pytest.raises(ServerStartError) as raised:
        server.start()
    assert "server exited before it was ready" in str(raised.value)
    assert "page_size" in str(raised.value) and "--- last" in str(raised.value)
    assert_gone(server.pid, server.port)


def test_a_server_that_hangs_at_start_up_is_killed_with_its_log_tail(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SERVER_BEHAVIOUR", "never_ready,ignore_sigterm")
    server = ServerProcess(
        argv_for_port=lambda port: [*FAKE_SERVER, *_fake_flags(port)],
        log_path=tmp_path / "hang.log",
        startup_timeout_s=1,
        stop_timeout_s=0.5,
    )
    with pytest.raises(ServerStartError) as raised:
        server.start()
    assert "never printed" in str(raised.value) and "fake server pid=" in str(raised.value)
    assert not process_alive(server.pid)


def test_a_dying_xdist_worker_takes_its_server_with_it(tmp_path):
    """A worker killed mid-test skips every fixture teardown; the parent-death signal must still fire."""
    record = tmp_path / "server.txt"
    (tmp_path / "test_dies.py").write_text(
        textwrap.dedent(f"""
        import os, signal

        def test_dies_with_a_server(kv_canary_server_factory):
            server = kv_canary_server_factory("mha", {{"max_total_tokens": 512}})
            with open({str(record)!r}, "w") as out:
                out.write(f"{{server.process.pid}} {{server.process.port}}")
            os.kill(os.getpid(), signal.SIGKILL)

        def test_survivor():
            pass
    """)
    )
    (tmp_path / "conftest.py").write_text("")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-n",
            "2",
            "-p",
            "xdist",
            "-p",
            "harness.pytest_plugin",  # loaded only when asked for, as everywhere outside this repository
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "--kv-canary-run-dir",
            str(tmp_path / "runs"),
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert "test_dies_with_a_server" in done.stdout and ("crashed" in done.stdout or "node down" in done.stdout), (
        done.stdout[-3000:]
    )
    pid, port = map(int, record.read_text().split())
    assert_gone(pid, port)


def _fake_flags(port: int) -> list[str]:
    return [
        "--model-mode",
        "mha",
        "--device",
        "cpu",
        "--page-size",
        "1",
        "--max-total-tokens",
        "64",
        "--swa-window",
        "8",
        "--sweep-interval",
        "0",
        "--real-kv",
        "none",
        "--canary-mode",
        "log",
        "--port",
        str(port),
    ]
