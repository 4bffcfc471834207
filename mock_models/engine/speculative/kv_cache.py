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

from mock_models.engine.kv_cache_manager import KVCacheManager
from mock_models.engine.request import Request


class SpeculativeKVCacheManager(KVCacheManager):
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
