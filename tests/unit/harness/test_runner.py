"""The runner against the fake server: verdicts, and the server stopped on every way out."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.runner import RunOptions, ServerProcess, run_scenario, safety_net
from harness.runner.engine_client import EngineClient
from tests.unit.harness.samples import BASELINE_MHA, DETECT_EVICTION, FAKE_SERVER_COMMAND, process_is_gone


@pytest.fixture
def options(tmp_path: Path) -> RunOptions:
    return RunOptions(
        log_dir=tmp_path / "logs",
        server_command=FAKE_SERVER_COMMAND,
        startup_timeout_s=20,
        run_timeout_s=20,
        request_timeout_s=10,
        stop_timeout_s=2,
    )


@pytest.fixture
def behaviour(monkeypatch):
    def set_behaviour(*names: str) -> None:
        monkeypatch.setenv("FAKE_SERVER_BEHAVIOUR", ",".join(names))

    return set_behaviour


def server_pid(log_path: Path) -> int:
    match = re.search(r"fake server pid=(\d+)", log_path.read_text())
    assert match, f"the fake server did not start: {log_path.read_text()}"
    return int(match[1])


def test_a_detected_fault_passes_and_the_server_is_stopped(load_text, options):
    result = run_scenario(load_text(DETECT_EVICTION), "mha", options)
    assert result.passed, result.failure_message()
    assert (result.check.injection_step, result.check.latency_steps) == (6, 2)
    # Detected during the workload's 2 x (1 + 4) forwards, so no filler request was needed.
    assert (result.engine_violation_count, result.forward_count) == (1, 10)
    assert process_is_gone(server_pid(Path(result.log_path)))


def test_the_fault_is_sent_as_the_scenario_wrote_it(load_text, options):
    result = run_scenario(load_text(DETECT_EVICTION), "swa", options)
    log_text = Path(result.log_path).read_text()
    assert 'fault 1 scheduled: {"at_step": 6, "count": 1, "kind": "evict_radix_node", "target": {}}' in log_text
    assert "--model-mode swa" in log_text and "--device cpu" in log_text


def test_a_missed_fault_fails_with_the_unmet_expectation(load_text, options, behaviour):
    behaviour("miss")
    result = run_scenario(load_text(DETECT_EVICTION), "mha", options)
    assert not result.passed and result.error is None
    assert "expected detected within 4 steps: no violation logged at or after the injection at step 6" in (
        result.failure_message()
    )
    # The runner kept the engine stepping past the bound before giving up.
    assert result.forward_count > 6 + 4


def test_a_slow_detection_is_waited_for_up_to_the_bound(load_text, options, monkeypatch):
    monkeypatch.setenv("FAKE_SERVER_LATENCY", "4")
    text = DETECT_EVICTION.replace("prompt_len: 8, max_new_tokens: 4, count: 2", "prompt_len: 8, max_new_tokens: 2")
    result = run_scenario(load_text(text), "mha", options)
    assert result.passed, result.failure_message()
    assert result.check.latency_steps == 4


def test_an_injection_without_target_fails(load_text, options, behaviour):
    behaviour("no_target")
    result = run_scenario(load_text(DETECT_EVICTION), "mha", options)
    assert "found no valid target: no running request holds a locked radix node" in result.failure_message()


def test_a_request_longer_than_the_servers_context_fails_by_key_before_anything_is_sent(load_text, options):
    text = DETECT_EVICTION.replace("prompt_len: 8, max_new_tokens: 4, count: 2", "prompt_len: 60, max_new_tokens: 8")
    result = run_scenario(load_text(text), "mha", options)
    assert result.error == (
        "WorkloadDoesNotFit: workload.requests[0]: prompt_len 60 + max_new_tokens 8 exceeds the "
        "server's max_context_len 64"
    )
    assert "scheduled" not in Path(result.log_path).read_text()  # not even the fault was sent
    assert not result.passed


def test_a_dirty_baseline_fails(load_text, options, behaviour):
    behaviour("dirty")
    result = run_scenario(load_text(BASELINE_MHA), "mha", options)
    assert "expected no violations: 1 violations logged, the first at step 3" in result.failure_message()


def test_a_server_that_crashes_on_start_is_reported_with_its_log_tail(load_text, options, behaviour):
    behaviour("crash_on_start")
    result = run_scenario(load_text(BASELINE_MHA), "mha", options)
    assert result.error.startswith("ServerStartError: server exited before it was ready")
    assert "RuntimeError: the fake engine failed to start on purpose" in result.error
    assert process_is_gone(server_pid(Path(result.log_path)))


def test_a_server_that_never_gets_ready_times_out(load_text, options, behaviour):
    behaviour("never_ready")
    options = RunOptions(**{**_fields(options), "startup_timeout_s": 1})
    result = run_scenario(load_text(BASELINE_MHA), "mha", options)
    assert "never printed 'kv_canary_server listening on http://...'" in result.error
    assert process_is_gone(server_pid(Path(result.log_path)))


def test_a_server_crashing_mid_run_is_reported_with_its_log_tail(load_text, options, behaviour):
    behaviour("crash_on_generate")
    result = run_scenario(load_text(BASELINE_MHA), "mha", options)
    assert result.error.startswith("ServerCrashed: the server exited during the run")
    assert "fatal: the fake engine crashed on purpose" in result.error
    assert not result.passed


def test_a_hanging_run_times_out_and_the_server_is_killed(load_text, options, behaviour):
    behaviour("hang_generate", "ignore_sigterm")
    options = RunOptions(**{**_fields(options), "run_timeout_s": 2, "stop_timeout_s": 0.5})
    started = time.monotonic()
    result = run_scenario(load_text(BASELINE_MHA), "mha", options)
    assert result.error.startswith("RunTimeout: the run passed its 2s budget while driving the workload")
    assert time.monotonic() - started < 10
    assert process_is_gone(server_pid(Path(result.log_path)))


@pytest.mark.parametrize("exception", [RuntimeError("a bug in the harness"), KeyboardInterrupt()])
def test_an_exception_or_ctrl_c_still_stops_the_server(load_text, options, monkeypatch, exception):
    def explode(*_args: object) -> None:
        raise exception

    monkeypatch.setattr(EngineClient, "inject", explode)
    with pytest.raises(type(exception)):
        run_scenario(load_text(DETECT_EVICTION), "mha", options)
    assert process_is_gone(server_pid(options.log_dir / "detect-eviction--mha.log"))


def test_the_safety_net_stops_servers_left_running(tmp_path):
    server = ServerProcess(
        argv_for_port=lambda port: [*FAKE_SERVER_COMMAND, *_fake_flags(port)], log_path=tmp_path / "server.log"
    )
    server.start()
    assert not process_is_gone(server.pid)
    safety_net.stop_all()
    assert process_is_gone(server.pid)


def test_a_killed_harness_takes_its_server_with_it(tmp_path):
    """SIGKILL skips every finally and atexit; the server's parent-death signal covers it."""
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from harness.runner import ServerProcess
        command = {[*FAKE_SERVER_COMMAND, *_fake_flags(0)[:-2]]!r}
        server = ServerProcess(argv_for_port=lambda port: [*command, "--port", str(port)],
                               log_path=Path({str(tmp_path / "server.log")!r}))
        server.start()
        print(server.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    harness = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False)
    pid = int(harness.stdout.strip())
    deadline = time.monotonic() + 5
    while not process_is_gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_is_gone(pid)


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


def _fields(options: RunOptions) -> dict:
    return {name: getattr(options, name) for name in RunOptions.__dataclass_fields__}
