"""Who owns which slot: admission reservations, per-forward allocation, window release, retraction.

Admission reserves, for the uncached prompt plus ``new_token_ratio`` of ``max_new_tokens``, the
full pages the request can need and an SWA budget (``EngineConfig.swa_request_budget``). With the
default ratio of 1 an admitted request never runs out mid-flight; below 1 a decode forward may find
too few pages beyond the reservations, and the scheduler then retracts a request
(``decode_pages_short``, ``retract``), as SGLang's ``retract_decode`` does. The invariant kept is
``free + evictable - reserved >= 0`` per pool: allocation draws on the request's own reservation
first, evicting unlocked radix nodes when the free list is short.

SWA freeing rule: after each forward, a request's private positions below
``align_down(seq_len - swa_window, page_size)`` release their SWA slots (map entry 0), and the
SWA slots go back into its budget. Slots owned by radix nodes keep their SWA rows while the
node is locked; unlocked nodes are tombstoned under SWA pressure. So at a forward with prefix
length P, positions ``[P - swa_window, P)`` of every request have a live SWA slot.

Handing slots to the radix cache and back (caching, finishing, aborting) is ``kv_release.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mock_models.config import EngineConfig
from mock_models.engine.bugs import NO_BUGS, EngineBugs
from mock_models.engine.kv_release import KVRelease
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


class KVCacheManager(KVRelease):
    def __init__(
        self,
        *,
        config: EngineConfig,
        req_to_token_pool: RequestRows,
        full_allocator: FullSlotAllocator,
        swa_allocator: SwaSlotAllocator | None,
        radix_cache: EnginePrefixCache,
        bugs: EngineBugs = NO_BUGS,
    ) -> None:
        self.config = config
        self.page_size = config.page_size
        self.req_to_token_pool = req_to_token_pool
        self.full_allocator = full_allocator
        self.swa_allocator = swa_allocator
        self.radix_cache = radix_cache
        self.bugs = bugs
        self.reserved_pages = 0
        self.reserved_swa_slots = 0

    # -- admission ------------------------------------------------------------------------------

    def pages_needed(self, *, kv_positions: int, prefix_len: int) -> int:
        return _ceil_div(kv_positions, self.page_size) - prefix_len // self.page_size

    def try_admit(self, req: Request, *, reuse_prefix: bool = True) -> bool:
        """Reuse the cached prefix and reserve the rest, or change nothing and return False.

        ``reuse_prefix=False`` computes the whole prompt: the matched prefix is not locked, so its
        SWA-resident rows stay evictable. With nothing running that always fits a request
        ``Engine.validate`` accepted, while its locked prefix's rows plus its own SWA budget may not.
        A request readmitted after a retraction prefills its outputs too (``token_ids``).
        """
        if self.req_to_token_pool.available_size() == 0:
            return False
        tokens = req.token_ids
        # The last token is always computed; an empty key matches nothing (the root).
        match = self.radix_cache.match_prefix(tokens[:-1] if reuse_prefix else [])
        self.radix_cache.inc_lock_ref(match.last_node)
        prefix_len = match.prefix_len
        remaining = req.max_new_tokens - len(req.output_ids)
        # A decode forward feeds each sampled token but the last, plus the overlap scheduler's overrun.
        decode_tokens = remaining - 1 + self.config.overrun_tokens
        reserved_decode = math.ceil(self.config.new_token_ratio * decode_tokens)
        pages = self.pages_needed(kv_positions=len(tokens) + reserved_decode, prefix_len=prefix_len)
        full_room = (
            self.full_allocator.available_pages()
            + self.radix_cache.evictable_size() // self.page_size
            - self.reserved_pages
        )
        swa_slots = 0
        swa_room = 0
        if self.swa_allocator is not None:
            swa_slots = self.config.swa_request_budget(
                uncached_tokens=len(tokens) - prefix_len, max_new_tokens=decode_tokens
            )
            swa_room = (
                self.swa_allocator.available_size() + self.radix_cache.swa_evictable_size() - self.reserved_swa_slots
            )
        if pages > full_room or swa_slots > swa_room:
            self.radix_cache.dec_lock_ref(match.last_node)
            if req.first_match_len is None:
                req.first_match_len = prefix_len
            return False

        row = self.req_to_token_pool.alloc()
        if prefix_len:
            self.req_to_token_pool.req_to_token[row, :prefix_len] = match.device_indices.to(torch.int32)
        self.req_to_token_pool.req_token_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64).to(
            self.req_to_token_pool.device
        )
        req.req_pool_idx = row
        req.last_node = match.last_node
        if req.epoch == 0:  # a readmission after a retraction keeps the first admission's figure
            req.cached_tokens = prefix_len
        req.kv_len = req.own_start = req.swa_released_len = prefix_len
        req.tree_owned_len = prefix_len
        if self.bugs.on("waiting-rematch-stale-protected-len") and req.first_match_len is not None:
            # SGLang#23392: the rematch refreshed the prefix (and the lock) but not the protected length,
            # which still says where the prefix of the first match ended.
            req.tree_owned_len = req.first_match_len
        req.prefill_len = len(tokens)
        req.fill_ids = list(tokens)
        req.own_slots, req.own_swa_slots = [], []
        req.full_pages_reserved = pages
        req.swa_slots_reserved = swa_slots
        req.epoch += 1
        req.digest_base = len(req.output_ids)
        self.reserved_pages += pages
        self.reserved_swa_slots += swa_slots
        return True

    # -- per forward ----------------------------------------------------------------------------

    def decode_pages_short(self, reqs: Sequence[Request]) -> int:
        """Pages a decode forward of ``reqs`` would lack beyond their reservations (<= 0: none)."""
        extra = 0
        for req in reqs:
            if req.allocated_len % self.page_size == 0 and req.full_pages_reserved == 0:
                extra += 1
        room = (
            self.full_allocator.available_pages()
            + self.radix_cache.evictable_size() // self.page_size
            - self.reserved_pages
        )
        return extra - room

    def allocate(self, items: Sequence[tuple[Request, int]]) -> list[int]:
        """Full-pool slots for each request's next ``n`` positions (after those already allocated),
        request after request."""
        starts = [req.allocated_len for req, _ in items]
        spans = [
            ExtendSpan(prefix_len=start, extend_len=n, continue_after=self._continue_after(req))
            for (req, n), start in zip(items, starts, strict=True)
        ]
        new_pages = [self._new_pages(span) for span in spans]
        swa_taken = [self._swa_slots_taken(n, pages) for (_, n), pages in zip(items, new_pages, strict=True)]
        # Room in both pools first: an allocator may take the SWA slots together with the full ones.
        self._make_room_full(sum(new_pages))
        if self.swa_allocator is not None:
            self._make_room_swa(self.swa_allocator, sum(swa_taken))
        out_cache_loc = self.full_allocator.alloc_extend(spans)
        start = 0
        for (req, n), pages in zip(items, new_pages, strict=True):
            # Beyond its reservation (new_token_ratio < 1) a request draws on free pages, which the
            # scheduler checked were there (decode_pages_short).
            from_reserve = min(pages, req.full_pages_reserved)
            req.own_slots += out_cache_loc[start : start + n]
            start += n
            req.full_pages_reserved -= from_reserve
            self.reserved_pages -= from_reserve
        self._write_req_to_token(items, starts, out_cache_loc)
        if self.swa_allocator is not None:
            swa_slots = iter(self.swa_allocator.alloc_for(out_cache_loc))
            for (req, n), taken in zip(items, swa_taken, strict=True):
                req.own_swa_slots += [next(swa_slots) for _ in range(n)]
                req.swa_slots_reserved -= taken
                self.reserved_swa_slots -= taken
        return out_cache_loc

    def _write_req_to_token(
        self, items: Sequence[tuple[Request, int]], starts: list[int], out_cache_loc: list[int]
    ) -> None:
        rows = [req.req_pool_idx for req, n in items for _ in range(n)]
        positions = [p for (_, n), start in zip(items, starts, strict=True) for p in range(start, start + n)]
        device = self.req_to_token_pool.device
        self.req_to_token_pool.write_slots(
            torch.tensor(rows, device=device),
            torch.tensor(positions, device=device),
            torch.tensor(out_cache_loc, device=device),
        )

    def _continue_after(self, req: Request) -> int:
        """The slot of the request's last allocated position if its page has room left (a page is
        never shared: that slot is the request's own), else -1."""
        end = req.allocated_len
        if end % self.page_size == 0:
            return -1
        if end - 1 >= req.own_start:
            return req.own_slot(end - 1)
        # The page began in the matched prefix. A correct match ends on a page boundary, so only an
        # unaligned match (bug paged-match-aliases-boundary-page) gets here; host read of one slot.
        return int(self.req_to_token_pool.req_to_token[req.req_pool_idx, end - 1])

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
