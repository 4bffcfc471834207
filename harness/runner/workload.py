"""A scenario's workload as concrete requests, and driving them at the scenario's concurrency."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import random

from harness.runner.deadline import Deadline
from harness.runner.engine_client import EngineClient
from harness.runner.errors import EngineHttpError, RunTimeout
from harness.scenario.model import Workload

FIRST_TOKEN = 1  # token 0 is kept out of prompts: engines commonly use it for padding


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PlannedRequest:
    input_ids: tuple[int, ...]
    max_new_tokens: int


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class WorkloadOutcome:
    completed: int
    failed: int  # answered with an HTTP error (e.g. canary_mode raise turning a violation into an error)
    first_error: str | None


def _tokens(seed_text: str, length: int, vocab_size: int) -> list[int]:
    # A string seed is hashed deterministically (not with PYTHONHASHSEED), so runs repeat exactly.
    rng = random.Random(seed_text)
    return [rng.randrange(FIRST_TOKEN, vocab_size) for _ in range(length)]


def plan_requests(workload: Workload, *, vocab_size: int) -> list[PlannedRequest]:
    """Requests in scenario order, ``count`` expanded; prompts sharing a prefix share its exact tokens."""
    prefixes = {
        name: _tokens(f"{workload.seed}/prefix/{name}", length, vocab_size)
        for name, length in workload.shared_prefixes.items()
    }
    planned: list[PlannedRequest] = []
    for spec in workload.requests:
        prefix = prefixes[spec.shared_prefix] if spec.shared_prefix is not None else []
        for _ in range(spec.count):
            suffix = _tokens(f"{workload.seed}/request/{len(planned)}", spec.prompt_len - len(prefix), vocab_size)
            planned.append(PlannedRequest(input_ids=(*prefix, *suffix), max_new_tokens=spec.max_new_tokens))
    return planned


def filler_request(index: int, *, vocab_size: int) -> PlannedRequest:
    """A short request that only keeps the engine stepping; its tokens share nothing with the workload."""
    return PlannedRequest(input_ids=tuple(_tokens(f"filler/{index}", 4, vocab_size)), max_new_tokens=8)


def drive_workload(
    client: EngineClient, planned: list[PlannedRequest], *, concurrency: int, deadline: Deadline
) -> WorkloadOutcome:
    completed = failed = 0
    first_error: str | None = None
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="kv-canary-request")
    try:
        futures = [
            executor.submit(client.generate, list(request.input_ids), request.max_new_tokens) for request in planned
        ]
        for future in concurrent.futures.as_completed(futures, timeout=deadline.remaining()):
            try:
                future.result()
                completed += 1
            except EngineHttpError as error:
                failed += 1
                first_error = first_error or str(error)
    except concurrent.futures.TimeoutError:
        raise RunTimeout(
            f"the run passed its {deadline.seconds:.0f}s budget while driving the workload "
            f"({completed + failed} of {len(planned)} requests answered)"
        ) from None
    finally:
        # Requests still in flight end when the server is stopped; do not wait for them here.
        executor.shutdown(wait=False, cancel_futures=True)
    return WorkloadOutcome(completed=completed, failed=failed, first_error=first_error)
