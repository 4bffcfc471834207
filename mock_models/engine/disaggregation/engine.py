"""Prefill-decode disaggregation in one process: ``DisaggregatedEngine`` is the decode engine, with a
prefill engine of its own (``EngineConfig.disaggregation: prefill_decode``).

A request is pre-allocated on the decode side first (its prompt's slots, SWA rows for its first
window), then prefilled by the prefill engine, which samples its first token and parks it; before
the next decode forward the parked requests' KV and canary records are transferred page by page
into the pre-allocated slots (``transfer.py``), the prefill engine releases them, and they join the
decode batch. Their first decode verifies, through the decode engine's canary, everything that
arrived: the whole prompt (FULL groups) and its last window (SWA groups).

Steps and hooks are the decode engine's: ``forward_count`` counts decode forwards, and the step
hooks (the fault injector) run right before the transfers that precede a decode forward, so a
fault in a transfer is applied at the step of the forward that first reads it. Each engine has
its own canary (``canaries``: decode first); the prefill canary's violation lines count the prefill
engine's forwards.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import torch

from kv_canary import CanaryConfig, CanaryManager
from kv_canary_contract import PoolGroup
from mock_models.config import EngineConfig
from mock_models.engine.disaggregation.decode import DecodeKVCacheManager
from mock_models.engine.disaggregation.prefill import PrefillEngine
from mock_models.engine.disaggregation.transfer import KvTransfer, TransferPlan
from mock_models.engine.engine import CanaryRaisedError, Engine
from mock_models.engine.request import GenerationResult, Request


class DisaggregatedEngine(Engine):
    features = Engine.features | {"disaggregation"}
    kv_cache_class = DecodeKVCacheManager

    def __init__(self, config: EngineConfig, *, canary_config: CanaryConfig | None = None) -> None:
        super().__init__(config, canary_config=canary_config)
        self.prefill = PrefillEngine(config.replace(disaggregation="none"), canary_config=canary_config)
        self.transfer = KvTransfer(
            source_pool=self.prefill.token_to_kv_pool,
            destination_pool=self.token_to_kv_pool,
            page_size=config.page_size,
        )
        self._bootstrapping: collections.deque[Request] = collections.deque()
        self._in_prefill: dict[str, Request] = {}  # rid -> the decode side's request, pre-allocated
        self._prefill_digests: dict[str, tuple[float, ...]] = {}  # the first output's, sampled on the prefill side
        # The fault injector's change to the next transfer (transfer_* fault kinds).
        self.next_transfer_fault: TransferFault | None = None

    @property
    def decode_kv_cache(self) -> DecodeKVCacheManager:
        assert isinstance(self.kv_cache, DecodeKVCacheManager)  # kv_cache_class
        return self.kv_cache

    # -- requests -------------------------------------------------------------------------------------

    def submit(self, input_ids: Sequence[int], max_new_tokens: int, *, rid: str | None = None) -> str:
        req = self._new_request(input_ids, max_new_tokens, rid=rid)
        self._bootstrapping.append(req)
        return req.rid

    def abort(self, rid: str) -> bool:
        waiting = next((req for req in self._bootstrapping if req.rid == rid), None)
        if waiting is not None:
            self._bootstrapping.remove(waiting)
            return True
        decode_req = self._in_prefill.pop(rid, None)
        if decode_req is None:
            return super().abort(rid)
        self.prefill.abort(rid)
        self.decode_kv_cache.cancel_preallocation(decode_req)
        return True

    def has_work(self) -> bool:
        return bool(self._bootstrapping or self._in_prefill or self.scheduler.has_work())

    @property
    def num_waiting(self) -> int:
        return len(self._bootstrapping) + len(self._in_prefill)

    @property
    def preallocated(self) -> list[Request]:
        """Decode-side requests holding their prompt's slots while the prefill engine computes it."""
        return list(self._in_prefill.values())

    @property
    def ready_transfers(self) -> list[tuple[Request, Request]]:
        """(prefill request, decode request) of every prompt whose KV waits to be transferred."""
        return [(req, self._in_prefill[req.rid]) for req in self.prefill.parking.parked]

    # -- stepping -------------------------------------------------------------------------------------

    def step(self) -> list[GenerationResult]:
        if not self.has_work():
            return []
        self._bootstrap()
        if self.prefill.has_work():
            for result in self.prefill.step():
                self._prefill_digests[result.rid] = result.output_digests
        if not self.ready_transfers and not self.scheduler.has_work():
            return []
        self._run_step_hooks()
        results = self._transfer_ready()
        if self.scheduler.has_work():
            try:
                results += self._forward_step()
            except CanaryRaisedError as raised:
                raised.results = results + raised.results  # requests a transfer finished are answered too
                raise
        return results

    def _bootstrap(self) -> None:
        """Pre-allocate waiting requests on the decode side, first come first served, and prefill them."""
        capacity = self.config.max_running_requests
        while self._bootstrapping and len(self.scheduler.running) + len(self._in_prefill) < capacity:
            req = self._bootstrapping[0]
            if not self.kv_cache.try_admit(req, reuse_prefix=False):
                return
            self.decode_kv_cache.preallocate(req)
            self._bootstrapping.popleft()
            self._in_prefill[req.rid] = req
            self.prefill.submit(req.origin_input_ids, 1, rid=req.rid)

    def _transfer_ready(self) -> list[GenerationResult]:
        finished = []
        for prefill_req, req in self.ready_transfers:
            plan = self.transfer_plan(prefill_req, req)
            if self.next_transfer_fault is not None:
                plan, self.next_transfer_fault = self.next_transfer_fault.applied_to(plan), None
            self.transfer.run(plan)
            self.prefill.parking.release(prefill_req)
            del self._in_prefill[req.rid]
            self._start_decoding(req, first_token=prefill_req.output_ids[0], cached_tokens=prefill_req.cached_tokens)
            if req.is_finished:
                req.finish_reason = "length"
                self.kv_cache.finish(req)
                finished.append(req)
            else:
                self.scheduler.running.append(req)
        return self._results(finished, [])

    def transfer_plan(self, prefill_req: Request, req: Request) -> TransferPlan:
        """What the transfer of ``prefill_req``'s prompt into ``req``'s pre-allocated slots moves."""
        n, page = req.prompt_len, self.config.page_size
        source = self.prefill.req_to_token_pool.req_to_token[prefill_req.req_pool_idx, :n].tolist()
        tail = self.decode_kv_cache.swa_tail_start(n)
        source_swa: list[int] = []
        if self.prefill.swa_allocator is not None:
            source_swa = self.prefill.swa_allocator.full_to_swa_index_mapping[source[tail:]].tolist()
        return TransferPlan(
            rid=req.rid,
            source_pages=tuple(slot // page for slot in source[::page]),
            destination_pages=tuple(slot // page for slot in req.own_slots[::page]),
            source_swa_slots=tuple(source_swa),
            destination_swa_slots=tuple(req.own_swa_slots[tail:]) if self.swa_allocator is not None else (),
        )

    def _start_decoding(self, req: Request, *, first_token: int, cached_tokens: int) -> None:
        req.kv_len = req.prompt_len
        req.cached_tokens = cached_tokens
        req.oracle_state = req.oracle_state.advance(first_token)
        req.output_ids.append(first_token)
        req.fill_ids.append(first_token)
        device = self.req_to_token_pool.device
        self.req_to_token_pool.write_tokens(
            torch.tensor([req.req_pool_idx], device=device),
            torch.tensor([req.prompt_len], device=device),
            torch.tensor([first_token], device=device),
        )
        # The first output was sampled by the prefill engine: its digest travels with the request, as a
        # retracted request's do (outputs before ``digest_base`` are the carried ones).
        req.carried_digests += self._prefill_digests.pop(req.rid, (0.0,))
        req.digest_base = len(req.output_ids)
        req.output_steps.append(self.forward_count)

    # -- maintenance ----------------------------------------------------------------------------------

    def flush_cache(self) -> bool:
        if self.has_work():
            return False
        return self.prefill.flush_cache() and super().flush_cache()

    @property
    def canaries(self) -> tuple[CanaryManager, ...]:
        return super().canaries + self.prefill.canaries

    def close(self) -> None:
        super().close()
        self.prefill.close()


class TransferFault:
    """One change to the next transfer: a pool group left out, its pages misordered, or the source
    pages of another request delivered (``donor``)."""

    def __init__(
        self, *, drop: PoolGroup | None = None, misorder: PoolGroup | None = None, donor: TransferPlan | None = None
    ) -> None:
        self.drop, self.misorder, self.donor = drop, misorder, donor

    def applied_to(self, plan: TransferPlan) -> TransferPlan:
        if self.drop is not None:
            plan = plan.with_group_dropped(self.drop)
        if self.misorder is not None:
            plan = plan.with_pages_misordered(self.misorder)
        if self.donor is not None:
            plan = plan.with_source_of(self.donor)
        return plan
