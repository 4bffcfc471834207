"""A scenario's workload as concrete requests in phases, and driving them: each phase sent at its
concurrency, its aborts sent once the engine has run their forwards, every answer kept."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import random
import secrets
import time

from harness.outputs import Answer
from harness.run_evidence import ActionRecord
from harness.runner.deadline import Deadline
from harness.runner.engine_client import EngineClient
from harness.runner.errors import EngineHttpError, RunTimeout
from harness.scenario.model import RequestSpec, Workload

FIRST_TOKEN = 1  # token 0 is kept out of prompts: engines commonly use it for padding
_ABORT_POLL_S = 0.002  # how often a phase with aborts reads forward_count
_FLUSH_RETRY_S = 5.0  # an engine finishing its last step answers 409 to /flush_cache for a moment


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PlannedRequest:
    input_ids: tuple[int, ...]
    max_new_tokens: int
    key: str = ""  # names the request in the run and in its clean twin, e.g. 'p2:doc#0'
    rid: str | None = None  # sent as /generate's rid, for the requests an abort names


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PlannedAbort:
    request: str  # the scenario's name of the request
    key: str
    after_steps: int


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PlannedPhase:
    requests: tuple[PlannedRequest, ...]
    concurrency: int
    flush_cache: bool = False
    aborts: tuple[PlannedAbort, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class WorkloadOutcome:
    completed: int
    failed: int  # answered with an HTTP error (e.g. canary_mode raise turning a violation into an error)
    first_error: str | None
    answers: tuple[Answer, ...] = ()
    actions: tuple[ActionRecord, ...] = ()


def _tokens(seed_text: str, length: int, vocab_size: int) -> list[int]:
    # A string seed is hashed deterministically (not with PYTHONHASHSEED), so runs repeat exactly.
    rng = random.Random(seed_text)
    return [rng.randrange(FIRST_TOKEN, vocab_size) for _ in range(length)]


def _prompts(workload: Workload, vocab_size: int) -> list[list[tuple[int, ...]]]:
    """The prompts of each request entry, one per count; prompts sharing a prefix share its exact tokens."""
    prefixes = {
        name: _tokens(f"{workload.seed}/prefix/{name}", length, vocab_size)
        for name, length in workload.shared_prefixes.items()
    }
    prompts: list[list[tuple[int, ...]]] = []
    made = 0
    for spec in workload.requests:
        prefix = prefixes[spec.shared_prefix][: spec.prefix_tokens] if spec.shared_prefix is not None else []
        of_spec = []
        for _ in range(spec.count):
            suffix = _tokens(f"{workload.seed}/request/{made}", spec.prompt_len - len(prefix), vocab_size)
            of_spec.append((*prefix, *suffix))
            made += 1
        prompts.append(of_spec)
    return prompts


def plan_requests(workload: Workload, *, vocab_size: int) -> list[PlannedRequest]:
    """Every request the workload sends, phase after phase, in order."""
    return [request for phase in plan_phases(workload, vocab_size=vocab_size) for request in phase.requests]


def plan_phases(workload: Workload, *, vocab_size: int) -> list[PlannedPhase]:
    """The phases as concrete requests. Without ``phases``, one phase sends every request entry, ``count``
    expanded; a request entry sent by two phases sends the same prompts again."""
    prompts = _prompts(workload, vocab_size)
    if workload.phases is None:
        requests = [
            PlannedRequest(input_ids=prompt, max_new_tokens=spec.max_new_tokens, key=f"{_label(spec, index)}#{copy}")
            for index, spec in enumerate(workload.requests)
            for copy, prompt in enumerate(prompts[index])
        ]
        return [PlannedPhase(requests=tuple(requests), concurrency=workload.concurrency)]
    index_of = {spec.name: index for index, spec in enumerate(workload.requests)}
    phases = []
    for number, phase in enumerate(workload.phases, start=1):
        aborted = {abort.request for abort in phase.aborts}
        requests = []
        for name in phase.send:
            spec = workload.requests[index_of[name]]
            for copy, prompt in enumerate(prompts[index_of[name]]):
                requests.append(
                    PlannedRequest(
                        input_ids=prompt,
                        max_new_tokens=spec.max_new_tokens,
                        key=f"p{number}:{name}#{copy}",
                        rid=f"{name}-p{number}-{secrets.token_hex(6)}" if name in aborted else None,
                    )
                )
        aborts = tuple(
            PlannedAbort(request=abort.request, key=f"p{number}:{abort.request}#0", after_steps=abort.after_steps)
            for abort in phase.aborts
        )
        phases.append(
            PlannedPhase(
                requests=tuple(requests),
                concurrency=phase.concurrency or workload.concurrency,
                flush_cache=phase.flush_cache,
                aborts=aborts,
            )
        )
    return phases


def _label(spec: RequestSpec, index: int) -> str:
    return spec.name or f"requests[{index}]"


def filler_request(index: int, *, vocab_size: int) -> PlannedRequest:
    """A short request that only keeps the engine stepping; its tokens share nothing with the workload."""
    return PlannedRequest(
        input_ids=tuple(_tokens(f"filler/{index}", 4, vocab_size)), max_new_tokens=8, key=f"filler#{index}"
    )


def send(client: EngineClient, request: PlannedRequest) -> Answer:
    """One ``/generate``, its answer parsed; EngineHttpError for an error answer or a malformed one."""
    answer = client.generate(list(request.input_ids), request.max_new_tokens, rid=request.rid)
    try:
        return Answer.from_generate(
            key=request.key, input_ids=request.input_ids, max_new_tokens=request.max_new_tokens, answer=answer
        )
    except ValueError as error:
        raise EngineHttpError(str(error)) from None


def drive_workload(client: EngineClient, phases: list[PlannedPhase], *, deadline: Deadline) -> WorkloadOutcome:
    """Each phase in turn: flush, send at its concurrency, abort on time, wait for every answer."""
    answers: list[Answer] = []
    actions: list[ActionRecord] = []
    failed = 0
    first_error: str | None = None
    for number, phase in enumerate(phases, start=1):
        if phase.flush_cache:
            actions.append(_flush(client, number, deadline))
        phase_answers, phase_failed, error, aborts = _run_phase(client, phase, number, deadline)
        answers += phase_answers
        actions += aborts
        failed += phase_failed
        first_error = first_error or error
    return WorkloadOutcome(
        completed=len(answers), failed=failed, first_error=first_error, answers=tuple(answers), actions=tuple(actions)
    )


def _flush(client: EngineClient, phase: int, deadline: Deadline) -> ActionRecord:
    give_up = time.monotonic() + min(_FLUSH_RETRY_S, deadline.remaining())
    while True:
        step = client.forward_count()
        try:
            client.flush_cache()
            return ActionRecord(kind="flush_cache", phase=phase, request=None, step=step, done=True, detail="flushed")
        except EngineHttpError as error:
            if time.monotonic() >= give_up:
                return ActionRecord(
                    kind="flush_cache", phase=phase, request=None, step=step, done=False, detail=str(error)
                )
            time.sleep(0.05)


def _run_phase(
    client: EngineClient, phase: PlannedPhase, number: int, deadline: Deadline
) -> tuple[list[Answer], int, str | None, list[ActionRecord]]:
    answers: list[Answer] = []
    failed = 0
    first_error: str | None = None
    start = client.forward_count() if phase.aborts else 0
    executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=phase.concurrency, thread_name_prefix="kv-canary-request"
    )
    try:
        futures = {executor.submit(send, client, request): request for request in phase.requests}
        actions = _abort_on_time(client, phase, number, start, futures, deadline)
        for future in concurrent.futures.as_completed(futures, timeout=deadline.remaining()):
            try:
                answers.append(future.result())
            except EngineHttpError as error:
                failed += 1
                first_error = first_error or str(error)
    except concurrent.futures.TimeoutError:
        raise RunTimeout(
            f"the run passed its {deadline.seconds:.0f}s budget while driving the workload "
            f"(phase {number}: {len(answers) + failed} of {len(phase.requests)} requests answered)"
        ) from None
    finally:
        # Requests still in flight end when the server is stopped; do not wait for them here.
        executor.shutdown(wait=False, cancel_futures=True)
    order = {request.key: index for index, request in enumerate(phase.requests)}
    answers.sort(key=lambda answer: order[answer.key])
    return answers, failed, first_error, _settle_aborts(actions, phase, answers)


def _abort_on_time(
    client: EngineClient,
    phase: PlannedPhase,
    number: int,
    start: int,
    futures: dict[concurrent.futures.Future[Answer], PlannedRequest],
    deadline: Deadline,
) -> list[ActionRecord]:
    """Send each abort once the phase has run its forwards; one whose request answered first is missed."""
    pending = sorted(phase.aborts, key=lambda abort: abort.after_steps)
    future_of = {request.key: future for future, request in futures.items()}
    rid_of = {request.key: request.rid for request in futures.values()}
    records: list[ActionRecord] = []
    while pending:
        deadline.check(f"waiting to send the aborts of phase {number}")
        step = client.forward_count()
        due = [abort for abort in pending if step - start >= abort.after_steps]
        for abort in due:
            pending.remove(abort)
            records.append(_abort(client, abort, number, step, rid_of[abort.key]))
        for abort in list(pending):
            if future_of[abort.key].done():  # answered before its forward came: the abort cannot land
                pending.remove(abort)
                records.append(
                    ActionRecord(
                        kind="abort",
                        phase=number,
                        request=abort.request,
                        step=None,
                        done=False,
                        detail=f"missed: the request answered by step {step}, before the phase's forward "
                        f"{abort.after_steps} (it began at step {start})",
                    )
                )
        if pending:
            time.sleep(_ABORT_POLL_S)
    return records


def _abort(client: EngineClient, abort: PlannedAbort, phase: int, step: int, rid: str | None) -> ActionRecord:
    if rid is None:
        raise ValueError(f"request {abort.key} has no rid to abort it by")  # plan_phases gives every one
    try:
        client.abort(rid)
    except EngineHttpError as error:
        return ActionRecord(kind="abort", phase=phase, request=abort.request, step=step, done=False, detail=str(error))
    # Whether it landed, the request's answer says (its finish reason); see _settle_aborts.
    return ActionRecord(kind="abort", phase=phase, request=abort.request, step=step, done=True, detail="sent")


def _settle_aborts(records: list[ActionRecord], phase: PlannedPhase, answers: list[Answer]) -> list[ActionRecord]:
    """An abort sent landed if its request answered with finish reason abort."""
    key_of = {abort.request: abort.key for abort in phase.aborts}
    answer_of = {answer.key: answer for answer in answers}
    settled = []
    for record in records:
        answer = answer_of.get(key_of.get(record.request or "", ""))
        if not record.done:
            settled.append(record)
        elif answer is None:
            settled.append(dataclasses.replace(record, done=False, detail="sent; the request answered with an error"))
        else:
            landed = answer.finish_reason == "abort"
            detail = (
                f"aborted after {len(answer.output_ids)} output token(s)"
                if landed
                else f"missed: the request finished first (finish reason {answer.finish_reason})"
            )
            settled.append(dataclasses.replace(record, done=landed, detail=detail))
    return settled
