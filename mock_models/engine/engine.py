"""The engine's public face: submit requests, step forwards, hook between forwards.

One ``step`` is one model forward. ``forward_count`` counts them from 1, as the canary does:
inside a step or batch hook, ``forward_count`` forwards have run and the coming one is number
``forward_count + 1``. Step hooks run before the forward is scheduled (admission then sees what
they changed); batch hooks once it is scheduled, with its ``ScheduledBatch`` (the requests it runs
are known, no slot is allocated yet). Internals stay reachable as plain attributes for fault injection:
``token_to_kv_pool``, ``req_to_token_pool``, ``full_allocator``, ``swa_allocator``,
``radix_cache``, ``scheduler`` (``waiting``, ``running``), ``last_forward_batch``.

With ``overlap_schedule`` a step plans forward T+1 before it processes forward T's results (as
SGLang's overlap scheduler launches the next batch before it processes the last one's), then runs
forward T+1; the last step of a run only processes (it runs no forward).
"""

from __future__ import annotations

import collections
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence

from kv_canary import CanaryConfig, CanaryManager, CanaryMode, KvCanaryViolationError, ViolationRecord
from kv_canary_contract import FEATURE_SETTINGS, feature_enabled
from kv_canary_contract.token_oracle import TokenOracle
from mock_models.config import EngineConfig, EngineConfigError, RankLayout
from mock_models.engine.bugs import EngineBugs
from mock_models.engine.forward_batch import ForwardBatch
from mock_models.engine.jitter import Jitter
from mock_models.engine.kv_cache_manager import KVCacheManager
from mock_models.engine.model_runner import ModelRunner
from mock_models.engine.ranks.forward_plans import plan_of
from mock_models.engine.ranks.launcher import RankGroup
from mock_models.engine.ranks.messages import RankJob
from mock_models.engine.request import GenerationResult, Request
from mock_models.engine.scheduler import ScheduledBatch, Scheduler

logger = logging.getLogger(__name__)

StepHook = Callable[["Engine"], None]
BatchHook = Callable[["Engine", ScheduledBatch], None]
_RECENT_FORWARDS_KEPT = 16  # the canary reports a violation within a few forwards of recording it


class InvalidRequestError(ValueError):
    """A request the engine can never serve; the message says which limit it breaks."""


class CanaryRaisedError(RuntimeError):
    """Canary mode ``raise`` reported violations at the end of a forward.

    The step still completed, so the engine stays consistent and serves on. The canary reports a
    violation a step or so after the forward that recorded it, so ``rids`` are the requests of the
    forwards the violations name (by step), not of the forward that surfaced them; a request that
    finished meanwhile was answered already. ``results`` is what the surfacing step finished;
    ``records`` are the canary's ``ViolationRecord``s, ``lines`` their log lines.
    """

    def __init__(self, violation: KvCanaryViolationError, *, rids: list[str], results: list[GenerationResult]) -> None:
        super().__init__(str(violation))
        self.records = violation.records
        self.lines = violation.lines
        self.rids = rids
        self.results = results


class Engine:
    """One serving engine. Subclasses add a feature (``features``: the contract's feature settings an
    engine class runs; ``mock_models.engine.build.build_engine`` picks the class for a config) by
    swapping the classes below and the steps they run."""

    features: frozenset[str] = frozenset({"host_tier_tokens"})  # the host tier lives in the radix cache
    kv_cache_class: type[KVCacheManager] = KVCacheManager
    scheduler_class: type[Scheduler] = Scheduler

    def __init__(self, config: EngineConfig, *, canary_config: CanaryConfig | None = None) -> None:
        unhandled = [
            name
            for name in FEATURE_SETTINGS
            if feature_enabled(config.contract_settings(), name) and name not in self.features
        ]
        if unhandled:
            raise EngineConfigError(
                f"EngineConfig.{unhandled[0]}: {type(self).__name__} does not run it; build the engine with "
                "mock_models.engine.build.build_engine(config), which picks the engine class for the config"
            )
        self.config = config
        self.canary_config = canary_config or CanaryConfig(mode=CanaryMode.NONE)
        # Several ranks: this process is rank 0 (it schedules, and sends every forward's plan to the
        # others); the others are processes of their own, each with its shard and its canary.
        self.rank_group = RankGroup.start(config, self.canary_config) if config.ranks > 1 else None
        try:
            self.model_runner = ModelRunner(
                config,
                layout=RankLayout.of(config, 0),
                links=self.rank_group.links if self.rank_group is not None else None,
            )
        except BaseException:
            if self.rank_group is not None:
                self.rank_group.close()
            raise
        self.model = self.model_runner.model
        self.token_to_kv_pool = self.model_runner.token_to_kv_pool
        self.req_to_token_pool = self.model_runner.req_to_token_pool
        self.full_allocator = self.model_runner.full_allocator
        self.swa_allocator = self.model_runner.swa_allocator
        self.radix_cache = self.model_runner.radix_cache
        self.jitter = Jitter(max_us=config.jitter_max_us, seed=config.jitter_seed, device=self.model_runner.device)
        self.jitter.before_writes_and_frees(self.token_to_kv_pool, self.full_allocator, self.swa_allocator)
        self.kv_cache = self.kv_cache_class(
            config=config,
            req_to_token_pool=self.req_to_token_pool,
            full_allocator=self.full_allocator,
            swa_allocator=self.swa_allocator,
            radix_cache=self.radix_cache,
            bugs=EngineBugs(config.bugs),
        )
        self.oracle = TokenOracle(seed=config.seed, vocab_size=config.vocab_size)
        self.scheduler = self.scheduler_class(config=config, kv_cache=self.kv_cache, oracle=self.oracle)
        self.canary = self.model_runner.install_canary(self.canary_config, self.radix_cache)
        self.forward_count = 0
        self.last_forward_batch: ForwardBatch | None = None
        self._in_flight: ScheduledBatch | None = None  # overlap: the forward run, its results not yet processed
        self._step_hooks: list[StepHook] = []
        self._batch_hooks: list[BatchHook] = []
        # rids of the last forwards, by forward number: a violation names the step that recorded it.
        self._recent_forwards: collections.OrderedDict[int, list[str]] = collections.OrderedDict()

    # -- requests -------------------------------------------------------------------------------

    def validate(self, input_ids: Sequence[int], max_new_tokens: int) -> None:
        """Raise InvalidRequestError unless the request can be served. Reads only the config."""
        config = self.config
        if not input_ids:
            raise InvalidRequestError("input_ids is empty: a prompt needs at least one token")
        bad = next((t for t in input_ids if not 0 <= t < config.vocab_size), None)
        if bad is not None:
            raise InvalidRequestError(f"input_ids holds token {bad}, outside the vocabulary [0, {config.vocab_size})")
        if max_new_tokens < 1:
            raise InvalidRequestError(f"max_new_tokens = {max_new_tokens}: must be >= 1")
        total = len(input_ids) + max_new_tokens
        if total > config.max_context_len:
            raise InvalidRequestError(
                f"prompt ({len(input_ids)} tokens) + max_new_tokens ({max_new_tokens}) = "
                f"{total} exceeds max_context_len {config.max_context_len}"
            )
        pages = self.kv_cache.pages_needed(kv_positions=total - 1 + config.overrun_tokens, prefix_len=0)
        if pages > config.num_pages:
            raise InvalidRequestError(
                f"prompt + max_new_tokens needs {pages} pages of {config.page_size} "
                f"tokens; the pool has {config.num_pages} (max_total_tokens "
                f"{config.max_total_tokens})"
            )

    def submit(self, input_ids: Sequence[int], max_new_tokens: int, *, rid: str | None = None) -> str:
        req = self._new_request(input_ids, max_new_tokens, rid=rid)
        self.scheduler.add_request(req)
        return req.rid

    def _new_request(self, input_ids: Sequence[int], max_new_tokens: int, *, rid: str | None) -> Request:
        """A validated request, its oracle state past the prompt; not queued."""
        self.validate(input_ids, max_new_tokens)
        prompt = [int(token) for token in input_ids]
        return Request(
            rid=rid or uuid.uuid4().hex,
            origin_input_ids=prompt,
            max_new_tokens=max_new_tokens,
            oracle_state=self.oracle.state_after(prompt),
        )

    def abort(self, rid: str) -> bool:
        """Drop a waiting or running request between forwards; False when no such request is pending.

        A running request's own slots go back to the allocator (not into the radix cache), its
        cached prefix is unlocked and its reservations returned; it never produces a result.
        """
        aborted = self.scheduler.abort(rid)
        if aborted:
            logger.info("request %s aborted", rid)
        return aborted

    def pending(self, rid: str) -> Request | None:
        """The waiting or running request ``rid``, if there is one."""
        return next((req for req in (*self.scheduler.waiting, *self.scheduler.running) if req.rid == rid), None)

    def has_work(self) -> bool:
        return self.scheduler.has_work() or self._in_flight is not None

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    # -- stepping -------------------------------------------------------------------------------

    def add_step_hook(self, hook: StepHook) -> Callable[[], None]:
        """Call ``hook(engine)`` before every forward (before it is scheduled); returns a remover."""
        self._step_hooks.append(hook)
        return lambda: self._step_hooks.remove(hook)

    def add_batch_hook(self, hook: BatchHook) -> Callable[[], None]:
        """Call ``hook(engine, batch)`` once each forward is scheduled, before its slots are allocated;
        returns a remover. ``batch.items`` are the requests the forward runs, in its order."""
        self._batch_hooks.append(hook)
        return lambda: self._batch_hooks.remove(hook)

    def step(self) -> list[GenerationResult]:
        """Run one forward if there is work; returns the requests it finished.

        Raises CanaryRaisedError (canary mode ``raise``) after a complete step that surfaced violations.
        """
        if not self.has_work():
            return []
        self._run_step_hooks()
        return self._forward_step()

    def _run_step_hooks(self) -> None:
        for hook in list(self._step_hooks):
            hook(self)

    def _forward_step(self) -> list[GenerationResult]:
        """Schedule and run one forward, right after the step hooks ran; the work is there."""
        batch = self.scheduler.schedule()
        in_flight, self._in_flight = self._in_flight, None
        if batch is None and in_flight is None:
            raise RuntimeError(
                f"{self.num_waiting} requests wait but none can be admitted with nothing "
                "running; the pools are smaller than a request validate() accepted"
            )
        finished: list[Request] = []
        overrun: list[Request] = []
        if batch is not None:
            self.jitter.pause()
            for batch_hook in list(self._batch_hooks):
                batch_hook(self, batch)
            self._carry_digests(batch)
            out_cache_loc = self.kv_cache.allocate([(item.req, item.count) for item in batch.items])
        if in_flight is not None:  # overlap: forward T's results, once forward T+1 is planned
            finished = self.scheduler.process_forward(in_flight, step=self.forward_count, next_batch=batch)
            overrun = list(self.scheduler.retiring)
        violation = None
        if batch is not None:
            violation = self._forward(batch, out_cache_loc)
            if self.config.overlap_schedule:
                self._in_flight = batch
                self.scheduler.retire()
            else:
                finished = self.scheduler.process_forward(batch, step=self.forward_count)
        results = self._results(finished, overrun)
        if violation is not None:
            raise CanaryRaisedError(violation, rids=self._rids_of_steps(violation.records), results=results)
        return results

    def _forward(self, batch: ScheduledBatch, out_cache_loc: list[int]) -> KvCanaryViolationError | None:
        forward_batch = ForwardBatch.build(
            forward_mode=batch.forward_mode,
            items=[(item.req, item.start, item.count) for item in batch.items],
            out_cache_loc=out_cache_loc,
            spec_info=batch.spec_info,
            req_to_token_pool=self.req_to_token_pool,
            token_to_kv_pool=self.token_to_kv_pool,
            device=self.model_runner.device,
        )
        if self.rank_group is not None:
            mapping = self.swa_allocator.full_to_swa_index_mapping if self.swa_allocator is not None else None
            self.rank_group.send_forward(plan_of(forward_batch, mapping))
        sampled = batch.sampled_outputs()
        violation = None
        self.jitter.pause()
        try:
            self.model_runner.forward(
                forward_batch,
                [index for index, _, _ in sampled],
                [row for _, row, _ in sampled],
                [output for _, _, output in sampled],
            )
        except KvCanaryViolationError as error:
            # Raised by the canary's host-side reporter after the model's forward and the TAIL
            # records: the forward is whole, only this step's checksum digests are lost.
            violation = error
        self.forward_count += 1
        self.last_forward_batch = forward_batch
        self._remember_forward([item.req.rid for item in batch.items])
        return violation

    def _carry_digests(self, batch: ScheduledBatch) -> None:
        """A retracted request's output digests leave with its row: keep them on the request."""
        spans = [(retraction.row, retraction.outputs) for retraction in batch.retracted]
        for retraction, digests in zip(batch.retracted, self.model_runner.read_digests(spans), strict=True):
            retraction.req.carried_digests += digests

    def _results(self, finished: list[Request], overrun: list[Request]) -> list[GenerationResult]:
        """Results of the requests finished this step (``overrun``: released after this step's forward)."""
        released = {id(req) for req in overrun}
        done = [req for req in finished if id(req) not in released] + overrun
        spans = [(req.req_pool_idx, len(req.output_ids) - req.digest_base) for req in done]
        now = time.perf_counter()
        results = []
        for req, digests in zip(done, self.model_runner.read_digests(spans), strict=True):
            output_digests = (*req.carried_digests, *digests)
            results.append(
                GenerationResult(
                    rid=req.rid,
                    output_ids=tuple(req.output_ids),
                    prompt_tokens=req.prompt_len,
                    completion_tokens=len(req.output_ids),
                    cached_tokens=req.cached_tokens,
                    finish_reason=req.finish_reason or "length",
                    attention_checksum=math.fsum(output_digests),
                    e2e_latency=now - req.submit_time,
                    output_steps=tuple(req.output_steps),
                    output_digests=output_digests,
                )
            )
        return results

    def _remember_forward(self, rids: list[str]) -> None:
        self._recent_forwards[self.forward_count] = rids
        while len(self._recent_forwards) > _RECENT_FORWARDS_KEPT:
            self._recent_forwards.popitem(last=False)

    def _rids_of_steps(self, records: Sequence[ViolationRecord]) -> list[str]:
        steps = {record.step for record in records}
        return list(dict.fromkeys(rid for step in sorted(steps) for rid in self._recent_forwards.get(step, ())))

    def run_until_idle(self, *, max_steps: int | None = None) -> dict[str, GenerationResult]:
        results: dict[str, GenerationResult] = {}
        steps = 0
        while self.has_work():
            if max_steps is not None and steps >= max_steps:
                raise RuntimeError(f"still busy after {max_steps} forwards")
            results.update((result.rid, result) for result in self.step())
            steps += 1
        return results

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int]) -> list[GenerationResult]:
        """Submit every prompt, run until idle, and return the results in prompt order."""
        limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        rids = [self.submit(prompt, limit) for prompt, limit in zip(prompts, limits, strict=True)]
        results = self.run_until_idle()
        return [results[rid] for rid in rids]

    # -- ranks ----------------------------------------------------------------------------------

    def on_ranks(self, job: RankJob, ranks: tuple[int, ...] | None = None) -> list[object]:
        """Run ``job(model_runner)`` on each of ``ranks`` (default: all) between forwards; the answers by
        rank, None where it did not run. ``job`` is a module-level function: it crosses to other
        ranks' processes by name."""
        chosen = tuple(range(self.config.ranks)) if ranks is None else ranks
        if self.rank_group is None:
            return [job(self.model_runner) if 0 in chosen else None]
        return self.rank_group.run(job, chosen, on_rank0=self.model_runner)

    # -- maintenance ----------------------------------------------------------------------------

    def flush_cache(self) -> bool:
        """Empty the radix cache; only when idle (returns False, changing nothing, otherwise)."""
        if self.has_work():
            return False
        self.radix_cache.reset()
        logger.info("radix cache flushed")
        return True

    @property
    def canaries(self) -> tuple[CanaryManager, ...]:
        """Every canary this engine installed (an engine of several model runners has several)."""
        return () if self.canary is None else (self.canary,)

    def close(self) -> None:
        """Drain the canary's last reports and stop the other ranks. Call between forwards, from the
        thread that steps."""
        self.model_runner.close_canary()
        self.canary = None
        if self.rank_group is not None:
            self.rank_group.close()
            self.rank_group = None
