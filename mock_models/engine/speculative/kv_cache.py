"""Rolling a verify window back: the KV-cache side of rejected drafts.

A verify forward writes its whole window, so the request owns slots for positions
``[kv_len, window_end)`` afterwards; once acceptance set ``kv_len``, the positions past it are
rejected drafts. Their SWA slots are released (map entries 0), and every page holding only
rejected positions goes back to the allocator and to the request's reservation, since the request
will need it again. Slots of rejected positions in the page the request still uses stay its own:
the next window continues that page, and its HEAD records are rewritten before anything reads
them, so no rejected draft is ever verified.
"""

from __future__ import annotations

from collections.abc import Sequence

from mock_models.engine.kv_cache_manager import KVCacheManager
from mock_models.engine.request import Request


class SpeculativeKVCacheManager(KVCacheManager):
    def allocate(self, items: Sequence[tuple[Request, int]]) -> list[int]:
        if not self.bugs.on("drafter-writes-unallocated-lookahead"):
            return super().allocate(items)
        # vLLM#42971: a prefix-hit request's first round gets no lookahead slots: only its first window
        # position is allocated, the others keep the row's entries as they stand (its previous owner's
        # slots, now the radix tree's), which the window is written through and the request takes as its own.
        stale = {
            index: self.req_to_token_pool.req_to_token[
                req.req_pool_idx, req.allocated_len + 1 : req.allocated_len + n
            ].tolist()
            for index, (req, n) in enumerate(items)
            if n > 1 and req.cached_tokens > 0 and len(req.output_ids) == 1
        }
        allocated = super().allocate([(req, 1 if index in stale else n) for index, (req, n) in enumerate(items)])
        out_cache_loc, start = [], 0
        for index, (req, n) in enumerate(items):
            taken = 1 if index in stale else n
            out_cache_loc += allocated[start : start + taken]
            start += taken
            if index in stale:
                out_cache_loc += stale[index]
                req.own_slots += stale[index]
                if self.swa_allocator is not None:
                    mapping = self.swa_allocator.full_to_swa_index_mapping
                    req.own_swa_slots += [int(mapping[slot]) for slot in stale[index]]
        return out_cache_loc

    def rollback(self, req: Request, *, allocated_end: int) -> None:
        """Give back what the request's last window allocated past ``req.kv_len``."""
        kept, first = req.kv_len, req.own_start
        if allocated_end <= kept:
            return
        rejected = allocated_end - kept
        if self.swa_allocator is not None:
            self.swa_allocator.release(req.own_slots[kept - first :], req.own_swa_slots[kept - first :])
            req.swa_slots_reserved += rejected
            self.reserved_swa_slots += rejected
            del req.own_swa_slots[kept - first :]
        page_end = kept + (-kept) % self.page_size  # the end of the last page a kept position is in
        freed = req.own_slots[page_end - first :]
        if freed:
            self.full_allocator.free(freed)
            pages = -(-len(freed) // self.page_size)  # from a page boundary; the last page may be part-used
            req.full_pages_reserved += pages
            self.reserved_pages += pages
        del req.own_slots[kept - first :]
