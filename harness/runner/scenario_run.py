"""One (scenario, mode) end to end: start the server, schedule the fault, drive the workload,
keep stepping until the fault had its chance to be detected, collect, stop, judge."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Protocol

import requests

from harness.expectations import check_expectations
from harness.injections import Injection
from harness.run_result import RunResult, pair_file_stem
from harness.runner.deadline import Deadline
from harness.runner.engine_client import EngineClient
from harness.runner.errors import EngineHttpError, RunnerError, ServerCrashed, WorkloadDoesNotFit
from harness.runner.server_command import DEFAULT_SERVER_COMMAND, effective_swa_divergence_interval, server_argv
from harness.runner.server_process import ServerProcess
from harness.runner.workload import drive_workload, filler_request, plan_requests
from harness.scenario.loader import LoadedScenario
from harness.scenario.model import EngineSettings, Scenario
from kv_canary.log_lines import ViolationRecord

DEFAULT_VOCAB_SIZE = 256  # used when GET /get_server_info names no vocab_size
# A fault expected to stay silent has no latency bound; this many forwards after it is how long
# the run keeps watching for a (wrong) violation.
SILENT_FAULT_OBSERVATION_FORWARDS = 16
# How many forwards past its trigger a still-scheduled fault is given before the run gives up on it.
TRIGGER_WAIT_FORWARDS = 256
_STALLED_FILLERS = 3
_CRASH_GRACE_S = 2.0  # how long a server that dropped a connection gets to show it has exited


class EngineTarget(Protocol):
    """Another engine than the mock server (``harness.sglang.target.SglangTarget``): it starts its
    own server per pair and gives the client that drives it."""

    def server(
        self, engine: EngineSettings, mode: str, *, log_path: Path, swa_divergence_interval: int | None
    ) -> ServerProcess: ...

    def client(self, server: ServerProcess, *, timeout_s: float) -> EngineClient: ...


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RunOptions:
    log_dir: Path
    device: str = "cpu"
    server_command: tuple[str, ...] = DEFAULT_SERVER_COMMAND
    target: EngineTarget | None = None  # None: the mock server from server_command
    startup_timeout_s: float = 180.0  # the first import of torch on a cold machine is slow
    run_timeout_s: float = 600.0
    request_timeout_s: float = 120.0
    stop_timeout_s: float = 10.0


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _Collected:
    injections: tuple[Injection, ...]
    forward_count: int
    engine_violation_count: int
    failed_requests: int


def run_scenario(loaded: LoadedScenario, mode: str, options: RunOptions) -> RunResult:
    """Run one pair; runner failures become a failed result, anything else propagates after cleanup."""
    scenario = loaded.scenario
    started = time.monotonic()
    deadline = Deadline(options.run_timeout_s)
    swa_divergence_interval = effective_swa_divergence_interval(
        scenario.engine, expects_swa_divergence=scenario.expect.swa_divergence is not None
    )
    log_path = options.log_dir / f"{pair_file_stem(scenario.name, mode)}.log"
    collected: _Collected | None = None
    error: str | None = None
    try:
        if options.target is None:
            server = engine_server(
                scenario.engine, mode, options, log_path=log_path, swa_divergence_interval=swa_divergence_interval
            )
        else:
            server = options.target.server(
                scenario.engine, mode, log_path=log_path, swa_divergence_interval=swa_divergence_interval
            )
        with server:
            collected = _collect(server, scenario, options, deadline)
    except RunnerError as failure:
        error = f"{type(failure).__name__}: {failure}"
    # Read after the server stopped: everything it logged, including lines flushed at exit.
    check = None
    if collected is not None:
        check = check_expectations(scenario, mode, server.log_text(), collected.injections)
    return RunResult(
        scenario=scenario.name,
        mode=mode,
        scenario_path=str(loaded.path),
        check=check,
        error=error,
        wall_time_s=time.monotonic() - started,
        log_path=str(log_path),
        forward_count=collected.forward_count if collected else None,
        engine_violation_count=collected.engine_violation_count if collected else None,
        failed_requests=collected.failed_requests if collected else 0,
        injections=collected.injections if collected else (),
    )


def engine_server(
    engine: EngineSettings, mode: str, options: RunOptions, *, log_path: Path, swa_divergence_interval: int | None
) -> ServerProcess:
    """The (not yet started) server for these engine settings and mode."""
    return ServerProcess(
        argv_for_port=lambda port: server_argv(
            server_command=options.server_command,
            engine=engine,
            mode=mode,
            port=port,
            device=options.device,
            swa_divergence_interval=swa_divergence_interval,
        ),
        log_path=log_path,
        startup_timeout_s=min(options.startup_timeout_s, options.run_timeout_s),
        stop_timeout_s=options.stop_timeout_s,
    )


def _collect(server: ServerProcess, scenario: Scenario, options: RunOptions, deadline: Deadline) -> _Collected:
    if options.target is None:
        client = EngineClient(server.base_url, timeout_s=options.request_timeout_s)
    else:
        client = options.target.client(server, timeout_s=options.request_timeout_s)
    try:
        info = client.server_info()
        vocab_size = _vocab_size(info)
        _check_context_fits(scenario, info)
        planned = plan_requests(scenario.workload, vocab_size=vocab_size)
        fault = scenario.fault if scenario.injects_fault else None
        fault_id = client.inject(fault.request_body()) if fault is not None else None
        workload = drive_workload(client, planned, concurrency=scenario.workload.concurrency, deadline=deadline)
        failed_fillers = 0
        if fault_id is not None:
            failed_fillers = _keep_stepping(server, client, scenario, fault_id, vocab_size, deadline)
        snapshot = client.flush_violations()
        injections = tuple(injection for injection in client.injections() if injection.fault_id == fault_id)
        return _Collected(
            injections=injections,
            forward_count=client.forward_count(),
            engine_violation_count=snapshot.count,
            failed_requests=workload.failed + failed_fillers,
        )
    except requests.RequestException as failure:
        if server.wait_for_exit(_CRASH_GRACE_S):
            raise ServerCrashed(f"the server exited during the run\n{server.log_tail()}") from None
        raise EngineHttpError(f"the server at {server.base_url} did not answer: {failure}") from None


def _vocab_size(info: dict[str, Any]) -> int:
    vocab_size = info.get("vocab_size", DEFAULT_VOCAB_SIZE)
    if not isinstance(vocab_size, int) or vocab_size < 2:
        raise EngineHttpError(f"GET /get_server_info has an unusable vocab_size: {vocab_size!r}")
    return vocab_size


def _check_context_fits(scenario: Scenario, info: dict[str, Any]) -> None:
    """The server would answer every too-long request with a 400: say so once, before the run, by key."""
    max_context_len = info.get("max_context_len")
    if not isinstance(max_context_len, int):
        return  # a server that does not say has its requests judged one by one
    for index, spec in enumerate(scenario.workload.requests):
        if spec.prompt_len + spec.max_new_tokens > max_context_len:
            raise WorkloadDoesNotFit(
                f"workload.requests[{index}]: prompt_len {spec.prompt_len} + max_new_tokens {spec.max_new_tokens} "
                f"exceeds the server's max_context_len {max_context_len}"
            )


def _keep_stepping(
    server: ServerProcess, client: EngineClient, scenario: Scenario, fault_id: int, vocab_size: int, deadline: Deadline
) -> int:
    """Send filler requests until the fault's detection window has passed (or it was seen early).

    Returns how many fillers the engine answered with an error.
    """
    bound = scenario.expect.within_steps
    settle = bound if scenario.expects_detection and bound is not None else SILENT_FAULT_OBSERVATION_FORWARDS
    at_step = scenario.fault.at_step if scenario.fault is not None else None
    give_up_at = max(client.forward_count(), at_step or 0) + TRIGGER_WAIT_FORWARDS
    failed = stalled = fillers = 0
    last_forward = -1
    while True:
        deadline.check("stepping the engine until the fault's detection window had passed")
        client.flush_violations()
        ours = [injection for injection in client.injections() if injection.fault_id == fault_id]
        forward = client.forward_count()
        if not ours or any(injection.status == "no_target" for injection in ours):
            return failed
        applied = [injection.step for injection in ours if injection.status == "applied" and injection.step is not None]
        if len(applied) == len(ours):
            step = min(applied)
            if forward > step + settle:
                return failed
            if scenario.expects_detection and _violation_logged(server.log_text(), step, step + settle):
                return failed
        elif forward >= give_up_at:
            return failed
        stalled = stalled + 1 if forward == last_forward else 0
        if stalled >= _STALLED_FILLERS:
            raise EngineHttpError(
                f"forward_count stayed at {forward} over {_STALLED_FILLERS} filler requests; the engine is not stepping"
            )
        last_forward = forward
        filler = filler_request(fillers, vocab_size=vocab_size)
        fillers += 1
        try:
            client.generate(list(filler.input_ids), filler.max_new_tokens)
        except EngineHttpError:
            failed += 1


def _violation_logged(log_text: str, first_step: int, last_step: int) -> bool:
    return any(first_step <= violation.step <= last_step for violation in ViolationRecord.find_all(log_text))
