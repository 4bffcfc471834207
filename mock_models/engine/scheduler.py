"""Continuous batching: admit from a FIFO queue, prefill (in chunks) before decoding, retract, finish.

Each ``schedule`` call plans one forward: an EXTEND batch while any admitted request still has
prompt tokens without a forward (at most ``chunked_prefill_size`` tokens over the batch, so a long
prompt is computed over several forwards, each chunk's prefix holding the earlier chunks), else a
DECODE batch of every running request. Admission is first come, first served: a request that does
not fit waits, and so does everything behind it. A DECODE batch short of pages (possible only with
``new_token_ratio`` below 1) first retracts requests, fewest outputs first (then longest prompt), as
SGLang's ``retract_decode`` does: they go back to the front of the queue with their outputs.

Planning reads ``allocated_len`` (positions with a slot), not ``kv_len``: with overlap scheduling
the previous forward is planned-for but not yet processed when the next one is planned, so its
tokens are counted, and a request the previous forward finishes is still in the next one (its
overrun). ``process_forward`` accounts a forward's K/V, samples, caches and retires.
"""

from __future__ import annotations

import collections
import dataclasses

import torch

from kv_canary_contract.token_oracle import TokenOracle
from mock_models.config import EngineConfig
from mock_models.engine.forward_batch import ForwardMode
from mock_models.engine.kv_cache_manager import KVCacheManager
from mock_models.engine.request import Request


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class BatchItem:
    req: Request
    start: int  # first position this forward computes
    count: int  # positions it computes
    samples: bool  # the forward samples the request's next token: a decode, or a prompt's last chunk
    epoch: int  # the request's admission this was planned under

    @property
    def is_current(self) -> bool:
        """The request still runs under that admission: not finished, aborted or retracted since."""
        return self.req.epoch == self.epoch


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Retraction:
    req: Request
    row: int  # the request row it held: its output digests are read from there
    outputs: int  # outputs sampled in the admission it lost


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ScheduledBatch:
    forward_mode: ForwardMode
    items: tuple[BatchItem, ...]
    admitted: tuple[Request, ...]  # requests admitted while scheduling this batch
    retracted: tuple[Retraction, ...] = ()  # requests retracted while scheduling it

    def sampling_items(self) -> list[tuple[int, BatchItem]]:
        """(index of the token whose hidden state is sampled from, item) for each item that samples."""
        sampling, start = [], 0
        for item in self.items:
            start += item.count
            if item.samples:
                sampling.append((start - 1, item))
        return sampling


class Scheduler:
    def __init__(self, *, config: EngineConfig, kv_cache: KVCacheManager, oracle: TokenOracle) -> None:
        self.config = config
        self.kv_cache = kv_cache
        self.oracle = oracle
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []
        # Finished by a forward's results while the forward planned after it (overlap) still computes
        # them; released once that forward has run.
        self.retiring: list[Request] = []

    def add_request(self, req: Request) -> None:
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, rid: str) -> bool:
        """Drop a request between forwards: from the queue, or from the batch with its slots freed."""
        for req in self.waiting:
            if req.rid == rid:
                self.waiting.remove(req)
                return True
        for index, req in enumerate(self.running):
            if req.rid == rid:
                del self.running[index]
                self.kv_cache.abort(req)
                req.finish_reason = "abort"
                return True
        return False

    # -- planning -------------------------------------------------------------------------------

    def schedule(self) -> ScheduledBatch | None:
        admitted = self._admit()
        prefilling = [req for req in self.running if not req.prefill_scheduled]
        retracted: list[Retraction] = []
        if prefilling:
            items, budget = [], self.config.chunked_prefill_size
            for req in prefilling:
                n = min(req.prefill_len - req.allocated_len, budget)
                if n == 0:
                    break
                items.append(self._item(req, n, samples=req.allocated_len + n == req.prefill_len))
                budget -= n
            mode = ForwardMode.EXTEND
        else:
            retracted = self._retract_for_decode()
            items = [self._item(req, 1, samples=True) for req in self.running]
            mode = ForwardMode.DECODE
        if not items:
            return None
        return ScheduledBatch(
            forward_mode=mode, items=tuple(items), admitted=tuple(admitted), retracted=tuple(retracted)
        )

    @staticmethod
    def _item(req: Request, count: int, *, samples: bool) -> BatchItem:
        return BatchItem(req=req, start=req.allocated_len, count=count, samples=samples, epoch=req.epoch)

    def _admit(self) -> list[Request]:
        admitted = []
        while self.waiting and len(self.running) < self.config.max_running_requests:
            # With nothing running nothing will free memory, so a request that fits only without
            # its cached prefix (whose SWA rows locking would pin) computes it instead of waiting forever.
            if not (
                self.kv_cache.try_admit(self.waiting[0])
                or (not self.running and self.kv_cache.try_admit(self.waiting[0], reuse_prefix=False))
            ):
                break
            req = self.waiting.popleft()
            self.running.append(req)
            admitted.append(req)
        return admitted

    def _retract_for_decode(self) -> list[Retraction]:
        retracted = []
        while len(self.running) > 1 and self.kv_cache.decode_pages_short(self.running) > 0:
            victim = min(self.running, key=lambda req: (len(req.output_ids), -req.prompt_len))
            self.running.remove(victim)
            retracted.append(
                Retraction(req=victim, row=victim.req_pool_idx, outputs=len(victim.output_ids) - victim.digest_base)
            )
            self.kv_cache.retract(victim)
            self.waiting.appendleft(victim)
        return retracted

    # -- results --------------------------------------------------------------------------------

    def process_forward(
        self, batch: ScheduledBatch, *, step: int, next_batch: ScheduledBatch | None = None
    ) -> list[Request]:
        """Account forward ``step``'s K/V (``batch``), sample, cache, and retire what finished; returns those.

        A request it finishes that ``next_batch`` (planned already, overlap) still computes is
        retired by ``retire`` once that forward has run; the others are released now.
        """
        live = [item for item in batch.items if item.is_current]
        finished: list[Request] = []
        prefill_done: list[Request] = []
        mid_prefill: list[Request] = []
        sampled_rows, sampled_positions, sampled_tokens = [], [], []
        for item in live:
            req = item.req
            req.kv_len += item.count
            if not item.samples:
                mid_prefill.append(req)
                continue
            token = self.oracle.sample(req.oracle_state)
            req.oracle_state = req.oracle_state.advance(token)
            req.output_ids.append(token)
            req.fill_ids.append(token)
            req.output_steps.append(step)
            sampled_rows.append(req.req_pool_idx)
            sampled_positions.append(req.kv_len)
            sampled_tokens.append(token)
            if req.is_finished:
                finished.append(req)
            elif req.kv_len == req.prefill_len:
                prefill_done.append(req)
        self._record_sampled(sampled_rows, sampled_positions, sampled_tokens)

        # Cache a finished prompt before the window release: its pages keep their SWA rows while
        # the request locks them, so a later request can share a prefix that ends anywhere in it.
        # A chunk that is not the last is cached after the release: what slid out goes in as tombstones.
        for req in prefill_done:
            self.kv_cache.cache_unfinished_req(req)
        self.kv_cache.release_out_of_window([item.req for item in live if not item.req.is_finished])
        for req in mid_prefill:
            self.kv_cache.cache_unfinished_req(req, chunked=True)
        still_computed = {id(item.req) for item in next_batch.items} if next_batch is not None else set()
        for req in finished:
            req.finish_reason = "length"
            if id(req) in still_computed:
                req.epoch += 1  # its item in the next forward is an overrun: computed, never processed
                self.retiring.append(req)
            else:
                self.kv_cache.finish(req)
        if finished:
            done = {id(req) for req in finished}
            self.running = [req for req in self.running if id(req) not in done]
        return finished

    def retire(self) -> None:
        """After the forward planned before they finished: release the requests it computed one token past their end."""
        for req in self.retiring:
            req.kv_len = req.allocated_len  # the overrun's K/V is written: the last output token's
            self.kv_cache.finish(req, overrun=True)
        self.retiring = []

    def _record_sampled(self, rows: list[int], positions: list[int], tokens: list[int]) -> None:
        """Write each sampled token into req_token_ids at its position, before the forward that feeds it."""
        if not rows:
            return
        pool = self.kv_cache.req_to_token_pool
        device = pool.device
        # Positions stay below max_context_len: the engine rejects prompt + max_new_tokens beyond it.
        pool.write_tokens(
            torch.tensor(rows, device=device),
            torch.tensor(positions, device=device),
            torch.tensor(tokens, device=device),
        )
