"""Continuous batching: admit from a FIFO queue, prefill (in chunks) before decoding, finish.

Each ``schedule`` call picks one forward: an EXTEND batch while any admitted request still has
prompt tokens to compute (at most ``chunked_prefill_size`` tokens over the batch, so a long
prompt is computed over several forwards, each chunk's prefix holding the earlier chunks), else
a DECODE batch of every running request. Admission is first come, first served: a request that
does not fit waits, and so does everything behind it.
"""

from __future__ import annotations

import collections
import dataclasses

import torch

from mock_models.config import EngineConfig
from mock_models.engine.forward_batch import ForwardMode, VerifyInput
from mock_models.engine.kv_cache_manager import KVCacheManager
from mock_models.engine.request import Request
from mock_models.models.token_oracle import TokenOracle


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ScheduledBatch:
    forward_mode: ForwardMode
    items: tuple[tuple[Request, int], ...]  # (request, tokens this forward computes for it)
    admitted: tuple[Request, ...]  # requests admitted while scheduling this batch
    spec_info: VerifyInput | None = None  # a TARGET_VERIFY batch's windows (engine/speculative/)

    def sampling_items(self) -> list[tuple[int, Request]]:
        """(index of the token whose hidden state is sampled from, request) for each request that
        reaches the end of its known tokens in this forward: every decode, a prompt's last chunk."""
        sampling, start = [], 0
        for req, n in self.items:
            start += n
            if req.kv_len + n == len(req.fill_ids):
                sampling.append((start - 1, req))
        return sampling


class Scheduler:
    def __init__(self, *, config: EngineConfig, kv_cache: KVCacheManager, oracle: TokenOracle) -> None:
        self.config = config
        self.kv_cache = kv_cache
        self.oracle = oracle
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []

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
                return True
        return False

    def schedule(self) -> ScheduledBatch | None:
        admitted = self._admit()
        prefilling = [req for req in self.running if req.needs_prefill]
        if prefilling:
            items, budget = [], self.config.chunked_prefill_size
            for req in prefilling:
                n = min(req.prompt_len - req.kv_len, budget)
                if n == 0:
                    break
                items.append((req, n))
                budget -= n
            mode = ForwardMode.EXTEND
        else:
            items = [(req, 1) for req in self.running]
            mode = ForwardMode.DECODE
        if not items:
            return None
        return ScheduledBatch(forward_mode=mode, items=tuple(items), admitted=tuple(admitted))

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

    def process_forward(self, batch: ScheduledBatch) -> list[Request]:
        """Account the forward's new K/V, sample, and retire what finished; returns those."""
        sampling = {id(req) for _, req in batch.sampling_items()}
        finished: list[Request] = []
        prefill_done: list[Request] = []
        sampled_rows, sampled_positions, sampled_tokens = [], [], []
        for req, n in batch.items:
            was_prefilling = req.needs_prefill
            req.kv_len += n
            if id(req) not in sampling:
                continue
            token = self.oracle.sample(req.oracle_state)
            req.oracle_state = req.oracle_state.advance(token)
            req.output_ids.append(token)
            req.fill_ids.append(token)
            sampled_rows.append(req.req_pool_idx)
            sampled_positions.append(req.kv_len)
            sampled_tokens.append(token)
            if req.is_finished:
                finished.append(req)
            elif was_prefilling:
                prefill_done.append(req)
        self._record_sampled(sampled_rows, sampled_positions, sampled_tokens)

        # Cache a finished prompt before the window release: its pages keep their SWA rows while
        # the request locks them, so a later request can share a prefix that ends anywhere in it.
        for req in prefill_done:
            self.kv_cache.cache_unfinished_req(req)
        return self._retire_finished(batch, finished)

    def _retire_finished(self, batch: ScheduledBatch, finished: list[Request]) -> list[Request]:
        """Release the window tails of the batch's unfinished requests, then finish the finished."""
        self.kv_cache.release_out_of_window([req for req, _ in batch.items if not req.is_finished])
        for req in finished:
            req.finish_reason = "length"
            self.kv_cache.finish(req)
        if finished:
            done = {id(req) for req in finished}
            self.running = [req for req in self.running if id(req) not in done]
        return finished

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
