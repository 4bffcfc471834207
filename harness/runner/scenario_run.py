"""One (scenario, mode) end to end: start the server, schedule the faults, drive the workload, keep
stepping until each fault had its chance to be detected, collect, stop; then, for an engine bug or a
scenario asserting harm, the same workload on a clean twin server (no fault, no engine bug) for the
reference outputs; judge."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Literal, Protocol

import requests

from harness.expectations import check_expectations
from harness.injections import Injection
from harness.outputs import Answer, check_outputs
from harness.run_evidence import ActionRecord, RunEvidence, TwinRun
from harness.run_result import RunResult, pair_file_stem
from harness.runner.deadline import Deadline
from harness.runner.engine_client import EngineClient
from harness.runner.errors import EngineHttpError, RunnerError, ServerCrashed, WorkloadDoesNotFit
from harness.runner.server_command import DEFAULT_SERVER_COMMAND, effective_swa_divergence_interval, server_argv
from harness.runner.server_process import ServerProcess
from harness.runner.workload import PlannedPhase, PlannedRequest, drive_workload, filler_request, plan_phases, send
from harness.scenario.loader import LoadedScenario
from harness.scenario.model import EngineSettings, Expectations, Scenario
from harness.scenario.rules import fault_bound
from kv_canary.log_lines import ViolationRecord
from kv_canary_contract import TokenOracle

DEFAULT_VOCAB_SIZE = 256  # used when GET /get_server_info names no vocab_size
# A fault expected to stay silent has no latency bound; this many forwards after it is how long
# the run keeps watching for a (wrong) violation.
SILENT_FAULT_OBSERVATION_FORWARDS = 16
# How many forwards past its trigger a still-scheduled fault is given before the run gives up on it.
TRIGGER_WAIT_FORWARDS = 256
_STALLED_FILLERS = 3
_CRASH_GRACE_S = 2.0  # how long a server that dropped a connection gets to show it has exited
MAX_TWIN_LINES = 10  # violation lines of a (dirty) twin kept in the result


class EngineTarget(Protocol):
    """Another engine than the mock server (``harness.sglang.target.SglangTarget``): it starts its
    own server per pair and gives the client that drives it."""

    def server(
        self, engine: EngineSettings, mode: str, *, log_path: Path, swa_divergence_interval: int | None
    ) -> ServerProcess: ...

    def client(self, server: ServerProcess, *, timeout_s: float) -> EngineClient: ...

    @property
    def samples_with_token_oracle(self) -> bool:
        """Whether its outputs are the token oracle's (the mock engine's): only then are outputs judged."""
        ...


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
    fault_ids: dict[str, int]
    forward_count: int
    engine_violation_count: int
    failed_requests: int
    answers: tuple[Answer, ...]
    actions: tuple[ActionRecord, ...]
    fillers: tuple[PlannedRequest, ...]
    oracle: TokenOracle | None  # None: the server does not say its seed and vocabulary


def run_scenario(loaded: LoadedScenario, mode: str, options: RunOptions) -> RunResult:
    """Run one pair; runner failures become a failed result, anything else propagates after cleanup."""
    scenario = loaded.in_mode(mode)
    started = time.monotonic()
    deadline = Deadline(options.run_timeout_s)
    log_path = options.log_dir / f"{pair_file_stem(scenario.name, mode)}.log"
    collected: _Collected | None = None
    log_text = ""
    error: str | None = None
    try:
        collected, log_text = _run_on_a_server(scenario, mode, options, deadline, log_path=log_path)
    except RunnerError as failure:
        error = f"{type(failure).__name__}: {failure}"
    judges_outputs = options.target is None or options.target.samples_with_token_oracle
    twin = None
    if collected is not None and needs_clean_twin(scenario) and judges_outputs:
        twin, twin_answers = _run_the_clean_twin(scenario, mode, options, deadline, collected, log_path=log_path)
    outputs = None
    if collected is not None and judges_outputs and collected.oracle is not None:
        reference = {answer.key: answer for answer in twin_answers} if twin is not None else None
        outputs = check_outputs(collected.answers, collected.oracle, reference)
    check = None
    if collected is not None:
        evidence = RunEvidence(fault_ids=collected.fault_ids, actions=collected.actions, outputs=outputs, twin=twin)
        check = check_expectations(scenario, mode, log_text, collected.injections, evidence)
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
        fault_ids=collected.fault_ids if collected else {},
        actions=collected.actions if collected else (),
        outputs=outputs,
        twin=twin,
        not_applicable=dict(loaded.not_applicable),
    )


def needs_clean_twin(scenario: Scenario) -> bool:
    """An engine bug's pair, or one asserting harm: their outputs are judged against the same workload run
    without the bug or faults (the digests of what a corrupted read harms; the tokens stay the oracle's).
    Other fault pairs are judged on their tokens alone, which keeps the default test run cheap."""
    return bool(scenario.bugs) or (scenario.has_culprit and scenario.expect.harm is not None)


def clean_twin(scenario: Scenario) -> Scenario:
    """The same scenario without its faults and engine bugs, expected to stay clean."""
    return scenario.model_copy(
        update={
            "engine": scenario.engine.model_copy(update={"bugs": None}),
            "fault": None,
            "faults": None,
            "expect": Expectations.model_validate({"detected": False}),
        }
    )


def _run_the_clean_twin(
    scenario: Scenario, mode: str, options: RunOptions, deadline: Deadline, run: _Collected, *, log_path: Path
) -> tuple[TwinRun, tuple[Answer, ...]]:
    """The workload, its actions and the run's fillers on a server without the faults and bugs."""
    twin_log = log_path.with_name(f"{log_path.stem}.twin.log")
    try:
        collected, log_text = _run_on_a_server(
            clean_twin(scenario), mode, options, deadline, log_path=twin_log, fillers=run.fillers
        )
    except RunnerError as failure:
        return TwinRun(log_path=str(twin_log), error=f"{type(failure).__name__}: {failure}"), ()
    violations = ViolationRecord.find_all(log_text)
    outputs = check_outputs(collected.answers, collected.oracle) if collected.oracle is not None else None
    twin = TwinRun(
        log_path=str(twin_log),
        error=None,
        violations=tuple(v.format() for v in violations[:MAX_TWIN_LINES]),
        violation_count=len(violations),
        outputs=outputs,
        actions=collected.actions,
    )
    return twin, collected.answers


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


def _run_on_a_server(
    scenario: Scenario,
    mode: str,
    options: RunOptions,
    deadline: Deadline,
    *,
    log_path: Path,
    fillers: tuple[PlannedRequest, ...] = (),
) -> tuple[_Collected, str]:
    """Start a server for ``scenario``, run it there, stop it; what was collected, and the whole log."""
    swa_divergence_interval = effective_swa_divergence_interval(
        scenario.engine, expects_swa_divergence=scenario.expect.swa_divergence is not None
    )
    if options.target is None:
        server = engine_server(
            scenario.engine, mode, options, log_path=log_path, swa_divergence_interval=swa_divergence_interval
        )
    else:
        server = options.target.server(
            scenario.engine, mode, log_path=log_path, swa_divergence_interval=swa_divergence_interval
        )
    with server:
        collected = _collect(server, scenario, options, deadline, fillers)
    # Read after the server stopped: everything it logged, including lines flushed at exit.
    return collected, server.log_text()


def _collect(
    server: ServerProcess,
    scenario: Scenario,
    options: RunOptions,
    deadline: Deadline,
    replayed_fillers: tuple[PlannedRequest, ...],
) -> _Collected:
    if options.target is None:
        client = EngineClient(server.base_url, timeout_s=options.request_timeout_s)
    else:
        client = options.target.client(server, timeout_s=options.request_timeout_s)
    try:
        info = client.server_info()
        vocab_size = _vocab_size(info)
        _check_context_fits(scenario, info)
        phases = plan_phases(scenario.workload, vocab_size=vocab_size)
        if replayed_fillers:
            phases.append(PlannedPhase(requests=replayed_fillers, concurrency=1))
        fault_ids = {name: client.inject(fault.request_body()) for name, fault in scenario.named_faults()}
        workload = drive_workload(client, phases, deadline=deadline)
        stepped = _Stepped()
        if fault_ids:
            _keep_stepping(server, client, scenario, fault_ids, vocab_size, deadline, stepped)
        snapshot = client.flush_violations()
        ours = set(fault_ids.values())
        injections = tuple(injection for injection in client.injections() if injection.fault_id in ours)
        return _Collected(
            injections=injections,
            fault_ids=fault_ids,
            forward_count=client.forward_count(),
            engine_violation_count=snapshot.count,
            failed_requests=workload.failed + stepped.failed,
            answers=workload.answers + tuple(stepped.answers),
            actions=workload.actions,
            fillers=tuple(stepped.fillers),
            oracle=_oracle(info, vocab_size),
        )
    except requests.RequestException as failure:
        if server.wait_for_exit(_CRASH_GRACE_S):
            raise ServerCrashed(f"the server exited during the run\n{server.log_tail()}") from None
        raise EngineHttpError(f"the server at {server.base_url} did not answer: {failure}") from None


def _oracle(info: dict[str, Any], vocab_size: int) -> TokenOracle | None:
    seed = info.get("seed")
    return TokenOracle(seed=seed, vocab_size=vocab_size) if isinstance(seed, int) else None


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


@dataclasses.dataclass(kw_only=True, slots=True)
class _Stepped:
    """The filler requests sent to keep the engine stepping, and their answers."""

    fillers: list[PlannedRequest] = dataclasses.field(default_factory=list)
    answers: list[Answer] = dataclasses.field(default_factory=list)
    failed: int = 0


def _keep_stepping(
    server: ServerProcess,
    client: EngineClient,
    scenario: Scenario,
    fault_ids: dict[str, int],
    vocab_size: int,
    deadline: Deadline,
    stepped: _Stepped,
) -> None:
    """Send filler requests until every fault's detection window has passed (or it was seen early)."""
    at_steps = [fault.at_step for _, fault in scenario.named_faults() if fault.at_step is not None]
    give_up_at = max([client.forward_count(), *at_steps]) + TRIGGER_WAIT_FORWARDS
    stalled = 0
    last_forward = -1
    while True:
        deadline.check("stepping the engine until the faults' detection windows had passed")
        client.flush_violations()
        injections = client.injections()
        forward = client.forward_count()
        states = {
            _watch_state(scenario, name, [i for i in injections if i.fault_id == fault_id], forward, server)
            for name, fault_id in fault_ids.items()
        }
        if "window" not in states and ("pending" not in states or forward >= give_up_at):
            return
        stalled = stalled + 1 if forward == last_forward else 0
        if stalled >= _STALLED_FILLERS:
            raise EngineHttpError(
                f"forward_count stayed at {forward} over {_STALLED_FILLERS} filler requests; the engine is not stepping"
            )
        last_forward = forward
        filler = filler_request(len(stepped.fillers), vocab_size=vocab_size)
        stepped.fillers.append(filler)
        try:
            stepped.answers.append(send(client, filler))
        except EngineHttpError:
            stepped.failed += 1


def _watch_state(
    scenario: Scenario, name: str, ours: list[Injection], forward: int, server: ServerProcess
) -> Literal["pending", "window", "done"]:
    """Fault ``name``: an application still to come (pending), applied with its detection window still open
    (window), or nothing left to watch (done: its window passed, it was seen, or it found no target)."""
    if not ours or any(injection.status == "no_target" for injection in ours):
        return "done"
    applied = [injection.step for injection in ours if injection.status == "applied" and injection.step is not None]
    if len(applied) < len(ours):
        return "pending"
    bound = fault_bound(scenario, name)
    settle = bound if scenario.expects_detection and bound is not None else SILENT_FAULT_OBSERVATION_FORWARDS
    step = min(applied)
    if forward > step + settle:
        return "done"
    if scenario.expects_detection and _violation_logged(server.log_text(), step, step + settle):
        return "done"
    return "window"


def _violation_logged(log_text: str, first_step: int, last_step: int) -> bool:
    return any(first_step <= violation.step <= last_step for violation in ViolationRecord.find_all(log_text))
