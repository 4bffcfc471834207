"""Handing a request's slots to the radix cache and back: caching a prompt (whole, or chunk by chunk
while it is prefilled), finishing, aborting, retracting.

``KVRelease`` is the part of ``KVCacheManager`` that ends ownership; it shares the manager's
allocators, radix cache, reservation counters and bug modes.

* **Caching unfinished requests.** After every chunk of a prompt, as SGLang's
  ``cache_unfinished_req`` does, the request's whole pages go into the radix cache (locked by the
  request), so concurrent requests can share them. In SWA modes only the whole prompt is cached,
  once it is done, with what slid out of the window meanwhile as tombstones (the request's
  SWA-evicted length): a node it locks keeps its SWA rows, so caching every chunk would pin a
  window's rows per chunk, past the request's SWA budget. Skipped when the tree already holds some
  of these tokens (another request cached them first): the request keeps its own copies, and
  ``finish`` frees them as duplicates.
* **Finishing** inserts the request's whole pages, frees what the tree already held and the
  partial last page, unlocks, unreserves.
* **Aborting and retracting** free the request's own slots without caching them; a retracted
  request goes back to the queue with its outputs and prefills them again when readmitted.
"""

from __future__ import annotations

import torch

from mock_models.config import EngineConfig
from mock_models.engine.bugs import EngineBugs
from mock_models.engine.memory_protocols import EnginePrefixCache, FullSlotAllocator, RequestRows, SwaSlotAllocator
from mock_models.engine.request import Request


class KVRelease:
    config: EngineConfig
    page_size: int
    req_to_token_pool: RequestRows
    full_allocator: FullSlotAllocator
    swa_allocator: SwaSlotAllocator | None
    radix_cache: EnginePrefixCache
    bugs: EngineBugs
    reserved_pages: int
    reserved_swa_slots: int

    def _align(self, length: int) -> int:
        return length - length % self.page_size

    def cache_unfinished_req(self, req: Request, *, chunked: bool = False) -> None:
        """Hand the request's computed whole pages to the radix cache; ``chunked``: more of the prompt follows."""
        if chunked and self.swa_allocator is not None:
            return
        end = self._align(req.kv_len)
        key = req.token_ids[:end]
        if end <= req.tree_owned_len or self.radix_cache.match_len(key) != req.tree_owned_len:
            return
        value = self.req_to_token_pool.req_to_token[req.req_pool_idx, :end].to(torch.int64)
        swa_resident_from = req.swa_released_len
        if self.bugs.on("unfinished-cache-drops-swa-evicted-len"):
            # SGLang#30845: the unfinished path inserts without the request's SWA-evicted length, so the
            # released positions enter the tree as live SWA KV.
            swa_resident_from = 0
        result = self.radix_cache.insert(key, value, swa_resident_from=swa_resident_from)
        self.radix_cache.inc_lock_ref(result.last_node)
        self.radix_cache.dec_lock_ref(req.locked_node)
        req.last_node = result.last_node
        req.tree_owned_len = end
        req.swa_released_len = max(req.swa_released_len, end)

    def finish(self, req: Request, *, overrun: bool = False) -> None:
        """Insert the request's whole pages into the radix cache, free the rest, unlock, unreserve.

        ``overrun``: the request finished while a forward in flight (overlap scheduling) computed one
        more token of it, whose K/V ``kv_len`` counts: it is the request's last output token.
        """
        end = self._align(req.kv_len)
        value = self.req_to_token_pool.req_to_token[req.req_pool_idx, :end].to(torch.int64)
        result = self.radix_cache.insert(req.token_ids[:end], value, swa_resident_from=req.swa_released_len)
        duplicates_end = max(result.prefix_len, req.tree_owned_len)
        tail_start = end
        if overrun and self.bugs.on("overlap-frees-in-flight-page"):
            # SGLang#36738: the tail is sized from the K/V written before the in-flight forward, so
            # when its token completed a page, that page is freed as well as cached.
            tail_start = self._align(req.kv_len - 1)
        self._free_own(req, req.tree_owned_len, duplicates_end)
        self._free_own(req, tail_start, req.kv_len)  # the partial last page
        self._retire(req)

    def abort(self, req: Request) -> None:
        """Free an admitted request's own slots without caching them, unlock its prefix, unreserve.

        Only between forwards; slots of a forward in flight are the request's too (that forward has
        written them by the time any later one can reuse them).
        """
        self._release_uncached(req)
        self._retire(req)

    def retract(self, req: Request) -> None:
        """Release everything an admitted request holds and make it a waiting request again, keeping its
        outputs: readmitted, it prefills its prompt and outputs (what the radix cache holds of them is reused)."""
        self._release_uncached(req)
        self._retire(req)
        req.kv_len = req.tree_owned_len = req.own_start = req.swa_released_len = 0
        req.own_slots, req.own_swa_slots = [], []
        req.first_match_len = None
        req.retractions += 1

    def _release_uncached(self, req: Request) -> None:
        start = req.tree_owned_len
        if self.bugs.on("chunked-prefill-abort-frees-cached-pages"):
            # SGLang#38319: the release frees from the protected length the request had at admission,
            # not from the end of what cache_unfinished_req has since handed to the radix tree.
            start = req.own_start
        self._free_own(req, start, req.allocated_len)

    def _retire(self, req: Request) -> None:
        self.radix_cache.dec_lock_ref(req.locked_node)
        self.reserved_pages -= req.full_pages_reserved
        self.reserved_swa_slots -= req.swa_slots_reserved
        req.full_pages_reserved = req.swa_slots_reserved = 0
        req.last_node = None
        req.epoch += 1  # a batch item planned before this is stale
        self.req_to_token_pool.free(req.req_pool_idx)  # the row stays named: its output digests are read next

    def _free_own(self, req: Request, start: int, end: int) -> None:
        if end <= start:
            return
        full_slots = self._slots(req, start, end)
        if self.swa_allocator is not None:
            resident_from = max(start, req.swa_released_len)
            if resident_from < end:
                self.swa_allocator.release(
                    req.own_slots[resident_from - req.own_start : end - req.own_start],
                    req.own_swa_slots[resident_from - req.own_start : end - req.own_start],
                )
        self.full_allocator.free(full_slots)

    def _slots(self, req: Request, start: int, end: int) -> list[int]:
        """The full slots of positions ``[start, end)``, from ``own_slots``. Positions below ``own_start``
        are the matched prefix, the radix cache's: only a bug mode frees those, and their slots are
        read from the request's row (a host read no correct path makes)."""
        if start >= req.own_start:
            return req.own_slots[start - req.own_start : end - req.own_start]
        prefix = self.req_to_token_pool.req_to_token[req.req_pool_idx, start : min(end, req.own_start)].tolist()
        return prefix + req.own_slots[: max(0, end - req.own_start)]
