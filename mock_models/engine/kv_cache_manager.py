"""Who owns which slot: admission reservations, per-forward allocation, window release, caching.

Admission reserves, for the uncached prompt plus ``max_new_tokens``, every full page the
request can ever need and an SWA budget (``EngineConfig.swa_request_budget``), so an admitted
request never runs out mid-flight and nothing is retracted. The invariant kept is
``free + evictable - reserved >= 0`` per pool: allocation draws on the request's own
reservation, evicting unlocked radix nodes when the free list is short.

SWA freeing rule: after each forward, a request's private positions below
``align_down(seq_len - swa_window, page_size)`` release their SWA slots (map entry 0), and the
SWA slots go back into its budget. Slots owned by radix nodes keep their SWA rows while the
node is locked; unlocked nodes are tombstoned under SWA pressure. So at a forward with prefix
length P, positions ``[P - swa_window, P)`` of every request have a live SWA slot.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mock_models.config import EngineConfig
from mock_models.engine.memory_protocols import (
    EnginePrefixCache,
    ExtendSpan,
    FullSlotAllocator,
    RequestRows,
    SwaSlotAllocator,
)
from mock_models.engine.request import Request


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(
        self,
        *,
        config: EngineConfig,
        req_to_token_pool: RequestRows,
        full_allocator: FullSlotAllocator,
        swa_allocator: SwaSlotAllocator | None,
        radix_cache: EnginePrefixCache,
    ) -> None:
        self.config = config
        self.page_size = config.page_size
        self.req_to_token_pool = req_to_token_pool
        self.full_allocator = full_allocator
        self.swa_allocator = swa_allocator
        self.radix_cache = radix_cache
        self.reserved_pages = 0
        self.reserved_swa_slots = 0

    def _align(self, length: int) -> int:
        return length - length % self.page_size

    # -- admission ------------------------------------------------------------------------------

    def pages_needed(self, *, kv_positions: int, prefix_len: int) -> int:
        return _ceil_div(kv_positions, self.page_size) - prefix_len // self.page_size

    def try_admit(self, req: Request, *, reuse_prefix: bool = True) -> bool:
        """Reuse the cached prefix and reserve the rest, or change nothing and return False.

        ``reuse_prefix=False`` computes the whole prompt: the matched prefix is not locked, so its
        SWA-resident rows stay evictable. With nothing running that always fits a request
        ``Engine.validate`` accepted, while its locked prefix's rows plus its own SWA budget may not.
        """
        if self.req_to_token_pool.available_size() == 0:
            return False
        # The last token is always computed; an empty key matches nothing (the root).
        match = self.radix_cache.match_prefix(req.origin_input_ids[:-1] if reuse_prefix else [])
        self.radix_cache.inc_lock_ref(match.last_node)
        prefix_len = match.prefix_len
        kv_positions = req.prompt_len + req.max_new_tokens - 1  # the last sampled token is never fed
        pages = self.pages_needed(kv_positions=kv_positions, prefix_len=prefix_len)
        full_room = (
            self.full_allocator.available_pages()
            + self.radix_cache.evictable_size() // self.page_size
            - self.reserved_pages
        )
        swa_slots = 0
        swa_room = 0
        if self.swa_allocator is not None:
            swa_slots = self.config.swa_request_budget(
                uncached_tokens=req.prompt_len - prefix_len, max_new_tokens=req.max_new_tokens - 1
            )
            swa_room = (
                self.swa_allocator.available_size() + self.radix_cache.swa_evictable_size() - self.reserved_swa_slots
            )
        if pages > full_room or swa_slots > swa_room:
            self.radix_cache.dec_lock_ref(match.last_node)
            return False

        row = self.req_to_token_pool.alloc()
        if prefix_len:
            self.req_to_token_pool.req_to_token[row, :prefix_len] = match.device_indices.to(torch.int32)
        self.req_to_token_pool.req_token_ids[row, : req.prompt_len] = torch.tensor(
            req.origin_input_ids, dtype=torch.int64
        ).to(self.req_to_token_pool.device)
        req.req_pool_idx = row
        req.last_node = match.last_node
        req.cached_tokens = req.kv_len = req.tree_owned_len = req.own_start = req.swa_released_len = prefix_len
        req.full_pages_reserved = pages
        req.swa_slots_reserved = swa_slots
        self.reserved_pages += pages
        self.reserved_swa_slots += swa_slots
        return True

    # -- per forward ----------------------------------------------------------------------------

    def allocate(self, items: Sequence[tuple[Request, int]]) -> list[int]:
        """Full-pool slots for each request's next ``n`` positions, request after request."""
        spans = [
            ExtendSpan(prefix_len=req.kv_len, extend_len=n, continue_after=self._continue_after(req))
            for req, n in items
        ]
        new_pages = [self._new_pages(span) for span in spans]
        for (req, _), pages in zip(items, new_pages, strict=True):
            if pages > req.full_pages_reserved:
                raise RuntimeError(
                    f"request {req.rid} needs {pages} more pages than it reserved "
                    f"({req.full_pages_reserved} left); the admission estimate is wrong"
                )
        swa_taken = [self._swa_slots_taken(n, pages) for (_, n), pages in zip(items, new_pages, strict=True)]
        # Room in both pools first: an allocator may take the SWA slots together with the full ones.
        self._make_room_full(sum(new_pages))
        if self.swa_allocator is not None:
            self._make_room_swa(self.swa_allocator, sum(swa_taken))
        out_cache_loc = self.full_allocator.alloc_extend(spans)
        start = 0
        for (req, n), pages in zip(items, new_pages, strict=True):
            req.own_slots += out_cache_loc[start : start + n]
            start += n
            req.full_pages_reserved -= pages
            self.reserved_pages -= pages
        self._write_req_to_token(items, out_cache_loc)
        if self.swa_allocator is not None:
            swa_slots = iter(self.swa_allocator.alloc_for(out_cache_loc))
            for (req, n), taken in zip(items, swa_taken, strict=True):
                req.own_swa_slots += [next(swa_slots) for _ in range(n)]
                req.swa_slots_reserved -= taken
                self.reserved_swa_slots -= taken
        return out_cache_loc

    def _write_req_to_token(self, items: Sequence[tuple[Request, int]], out_cache_loc: list[int]) -> None:
        rows = [req.req_pool_idx for req, n in items for _ in range(n)]
        positions = [p for req, n in items for p in range(req.kv_len, req.kv_len + n)]
        device = self.req_to_token_pool.device
        self.req_to_token_pool.write_slots(
            torch.tensor(rows, device=device),
            torch.tensor(positions, device=device),
            torch.tensor(out_cache_loc, device=device),
        )

    def _continue_after(self, req: Request) -> int:
        """The slot of the request's last position if its page has room left (a page is never
        shared: that slot is the request's own), else -1."""
        if req.kv_len % self.page_size == 0:
            return -1
        return req.own_slot(req.kv_len - 1)

    def _new_pages(self, span: ExtendSpan) -> int:
        continued = (
            0 if span.continue_after < 0 else min(span.extend_len, self.page_size - span.prefix_len % self.page_size)
        )
        return _ceil_div(span.extend_len - continued, self.page_size)

    def _swa_slots_taken(self, new_tokens: int, new_pages: int) -> int:
        if self.config.swa_pages_in_step:
            return new_pages * self.page_size
        return new_tokens

    def _make_room_full(self, pages: int) -> None:
        short = pages - self.full_allocator.available_pages()
        if short > 0:
            self.radix_cache.evict(short * self.page_size)

    def _make_room_swa(self, swa_allocator: SwaSlotAllocator, slots: int) -> None:
        short = slots - swa_allocator.available_size()
        if short > 0:
            self.radix_cache.evict_swa(short)

    def release_out_of_window(self, reqs: Sequence[Request]) -> None:
        """Free the SWA slots of private positions that slid out of every request's window."""
        if self.swa_allocator is None:
            return
        full_slots: list[int] = []
        swa_slots: list[int] = []
        for req in reqs:
            start = max(req.swa_released_len, req.tree_owned_len)
            end = self._align(req.kv_len - self.config.swa_window)
            if end <= start:
                continue
            full_slots += req.own_slots[start - req.own_start : end - req.own_start]
            swa_slots += req.own_swa_slots[start - req.own_start : end - req.own_start]
            req.swa_released_len = end
            req.swa_slots_reserved += end - start  # released slots return to the request's budget
            self.reserved_swa_slots += end - start
        self.swa_allocator.release(full_slots, swa_slots)

    # -- handing slots to the radix cache -------------------------------------------------------

    def cache_unfinished_req(self, req: Request) -> None:
        """After prefill, hand the prompt's whole pages to the radix cache so others can share them.

        Skipped when the tree already holds some of these tokens (another request cached them
        first): the request keeps its own copies, and ``finish`` frees them as duplicates.
        """
        end = self._align(req.kv_len)
        key = req.token_ids[:end]
        if end <= req.tree_owned_len or self.radix_cache.match_len(key) != req.tree_owned_len:
            return
        value = self.req_to_token_pool.req_to_token[req.req_pool_idx, :end].to(torch.int64)
        result = self.radix_cache.insert(key, value, swa_resident_from=req.swa_released_len)
        self.radix_cache.inc_lock_ref(result.last_node)
        self.radix_cache.dec_lock_ref(req.locked_node)
        req.last_node = result.last_node
        req.tree_owned_len = end
        req.swa_released_len = max(req.swa_released_len, end)

    def finish(self, req: Request) -> None:
        """Insert the request's whole pages into the radix cache, free the rest, unlock, unreserve."""
        end = self._align(req.kv_len)
        value = self.req_to_token_pool.req_to_token[req.req_pool_idx, :end].to(torch.int64)
        result = self.radix_cache.insert(req.token_ids[:end], value, swa_resident_from=req.swa_released_len)
        duplicates_end = max(result.prefix_len, req.tree_owned_len)
        self._free_own(req, req.tree_owned_len, duplicates_end)
        self._free_own(req, end, req.kv_len)  # the partial last page
        self._retire(req)

    def abort(self, req: Request) -> None:
        """Free an admitted request's own slots without caching them, unlock its prefix, unreserve.

        Only between forwards: every position below ``kv_len`` has K/V, nothing is in flight.
        """
        self._free_own(req, req.tree_owned_len, req.kv_len)
        self._retire(req)

    def _retire(self, req: Request) -> None:
        self.radix_cache.dec_lock_ref(req.locked_node)
        self.reserved_pages -= req.full_pages_reserved
        self.reserved_swa_slots -= req.swa_slots_reserved
        req.full_pages_reserved = req.swa_slots_reserved = 0
        req.last_node = None
        self.req_to_token_pool.free(req.req_pool_idx)

    def _free_own(self, req: Request, start: int, end: int) -> None:
        if end <= start:
            return
        full_slots = req.own_slots[start - req.own_start : end - req.own_start]
        if self.swa_allocator is not None:
            resident_from = max(start, req.swa_released_len)
            self.swa_allocator.release(
                req.own_slots[resident_from - req.own_start : end - req.own_start],
                req.own_swa_slots[resident_from - req.own_start : end - req.own_start],
            )
        self.full_allocator.free(full_slots)
