"""The engine loop in a background thread; HTTP handlers hand work over through a queue.

Everything that touches the engine runs on this one thread: generation, ``call(fn)`` jobs
(flush the cache, drain the canary) between forwards, and shutdown. Callers get a
``concurrent.futures.Future``. The engine never waits on a caller: a caller that gives up (a
client that disconnected) ``abort``s its request, which frees its slots between two forwards.

The loop notes what it is busy with (a forward, a job) and since when: ``stuck()`` says so once
one thing has taken longer than ``stuck_after_s``, which ``GET /health`` reports as a 503, since
a thread that never returns to its loop answers nothing while the process looks alive.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from mock_models.engine.engine import CanaryRaisedError, Engine

logger = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5  # an idle loop wakes this often to notice a stop request
# A forward or job running longer than this means the engine thread is stuck. A CPU forward takes
# milliseconds; the first forward on CUDA compiles the canary's Triton kernels, which can take tens of seconds.
STUCK_AFTER_S = 120.0


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _Job:
    """One hand-over to the engine thread: a request to generate, or a call between forwards."""

    generate: tuple[list[int], int, str] | None = None  # (input_ids, max_new_tokens, rid)
    call: Callable[[Engine], Any] | None = None


class EngineStoppedError(RuntimeError):
    """The engine thread has stopped (shutdown or an engine failure); nothing more is served."""


class RequestAbortedError(RuntimeError):
    """The request was aborted before it finished (its caller went away)."""


class EngineWorker:
    def __init__(self, engine: Engine, *, stuck_after_s: float = STUCK_AFTER_S) -> None:
        self.engine = engine
        self.stuck_after_s = stuck_after_s
        # (monotonic start, what) of the forward or job running now; None between them. Replaced
        # whole by the engine thread and read whole by others: one reference, no lock needed.
        self._busy: tuple[float, str] | None = None
        self._inbox: queue.Queue[tuple[_Job, concurrent.futures.Future]] = queue.Queue()
        self._pending: dict[str, concurrent.futures.Future] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()  # orders "accepting" against the final drain of the inbox
        self._accepting = True
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def start(self) -> None:
        self._thread.start()

    def activity(self, *, longer_than_s: float = 0.0) -> str | None:
        """What the engine thread is running and for how long, if it has run it longer than ``longer_than_s``."""
        busy = self._busy
        if busy is None or not self._thread.is_alive():
            return None
        since, what = busy
        elapsed = time.monotonic() - since
        return f"running {what} for {elapsed:.1f} s" if elapsed >= longer_than_s else None

    def stuck(self) -> str | None:
        """Why the engine thread counts as stuck (one forward or job past ``stuck_after_s``), else None."""
        activity = self.activity(longer_than_s=self.stuck_after_s)
        if activity is None:
            return None
        return (
            f"the engine thread has been {activity} (the limit is {self.stuck_after_s:g} s): it is stuck and "
            "answers nothing; stop the server and read its log"
        )

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the engine thread to end; whether it has (True if never started)."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def generate(
        self, input_ids: Sequence[int], max_new_tokens: int, *, rid: str | None = None
    ) -> concurrent.futures.Future:
        """Validate now (raises InvalidRequestError) and queue the request; resolves to a GenerationResult.

        ``rid`` names it for ``abort`` (default: a fresh id).
        """
        self.engine.validate(input_ids, max_new_tokens)  # reads only the frozen config: thread-safe
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._put(_Job(generate=(list(input_ids), max_new_tokens, rid or uuid.uuid4().hex)), future)
        return future

    def abort(self, rid: str) -> concurrent.futures.Future:
        """Drop request ``rid`` between forwards, failing its future with RequestAbortedError.

        Queued after the request's own job, so it finds the request even if it was not submitted
        yet; resolves to whether the request was still pending (False: finished or unknown).
        """

        def drop(engine: Engine) -> bool:
            future = self._pending.pop(rid, None)
            if future is None:
                return False
            engine.abort(rid)
            future.set_exception(RequestAbortedError(f"request {rid} was aborted"))
            return True

        return self.call(drop)

    def call(self, job: Callable[[Engine], Any]) -> concurrent.futures.Future:
        """Run ``job(engine)`` on the engine thread between two forwards."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._put(_Job(call=job), future)
        return future

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop after the current forward; every unanswered request fails with EngineStoppedError."""
        self.request_stop()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def request_stop(self) -> None:
        """Ask the loop to stop, without waiting (safe from a signal handler)."""
        self._stop.set()

    def _put(self, job: _Job, future: concurrent.futures.Future) -> None:
        with self._lock:
            if not self._accepting:
                raise EngineStoppedError(self.stopped_reason)
            self._inbox.put((job, future))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._run_jobs(wait=not self.engine.has_work())
                if self.engine.has_work() and not self._stop.is_set():
                    self._step()
        except BaseException as error:  # the engine's state is unknown now: stop serving
            self.failure = error
            logger.exception("engine loop failed; failing every pending request")
        finally:
            self._shut_down()

    def _run_jobs(self, *, wait: bool) -> None:
        try:
            job, future = self._inbox.get(timeout=_IDLE_WAIT_S) if wait else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if future.set_running_or_notify_cancel():  # False: cancelled, its caller is gone
                self._busy = (time.monotonic(), _describe(job))
                try:
                    if job.generate is not None:
                        # Answered by _deliver when the request finishes.
                        input_ids, max_new_tokens, rid = job.generate
                        self._pending[self.engine.submit(input_ids, max_new_tokens, rid=rid)] = future
                    elif job.call is not None:
                        future.set_result(job.call(self.engine))
                except Exception as error:  # the job's own error goes to its caller
                    future.set_exception(error)
                finally:
                    self._busy = None
            try:
                job, future = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _step(self) -> None:
        self._busy = (time.monotonic(), f"forward {self.engine.forward_count + 1}")
        try:
            results = self.engine.step()
        except CanaryRaisedError as raised:
            # The requests of that forward get the error; they run on in the engine, unanswered.
            for rid in raised.rids:
                future = self._pending.pop(rid, None)
                if future is not None:
                    future.set_exception(raised)
            results = raised.results
        finally:
            self._busy = None
        for result in results:
            # None: answered already (with a canary error). A caller that went away (a client
            # that disconnected) still has its future here, and nobody reads it.
            future = self._pending.pop(result.rid, None)
            if future is not None:
                future.set_result(result)

    def _shut_down(self) -> None:
        with self._lock:
            self._accepting = False
        error = EngineStoppedError(self.stopped_reason)
        while True:
            try:
                _, future = self._inbox.get_nowait()
            except queue.Empty:
                break
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
        for future in self._pending.values():
            future.set_exception(error)
        self._pending.clear()
        try:
            self.engine.close()
        except Exception:
            logger.exception("closing the engine's canary failed")
        logger.info("engine loop stopped after %d forwards", self.engine.forward_count)

    @property
    def stopped_reason(self) -> str:
        if self.failure is not None:
            return f"the engine failed: {self.failure!r}"
        return "the server is shutting down"


def _describe(job: _Job) -> str:
    if job.generate is not None:
        return f"the submission of request {job.generate[2]}"
    return f"the job {getattr(job.call, '__qualname__', repr(job.call))}"
