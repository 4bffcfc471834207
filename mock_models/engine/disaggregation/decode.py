"""The decode engine's memory side: slots for a prompt it never computes, allocated before it arrives.

As SGLang's decode engine pre-allocates a request before the prefill engine sends it: every full
page the prompt needs, and SWA slots for the positions its first decode reads through the window
(from ``align_down(prompt_len - swa_window)``: what the transfer fills; the positions before it
are out of every window already, so they never get one).
"""

from __future__ import annotations

import torch

from mock_models.engine.kv_cache_manager import KVCacheManager
from mock_models.engine.memory_protocols import ExtendSpan
from mock_models.engine.request import Request


class DecodeKVCacheManager(KVCacheManager):
    def swa_tail_start(self, prompt_len: int) -> int:
        return self._align(max(0, prompt_len - self.config.swa_window))

    def preallocate(self, req: Request) -> None:
        """Slots for ``req``'s whole prompt, after ``try_admit(req, reuse_prefix=False)`` reserved them."""
        n = req.prompt_len
        pages = -(-n // self.page_size)
        self._make_room_full(pages)
        req.own_slots = self.full_allocator.alloc_extend([ExtendSpan(prefix_len=0, extend_len=n, continue_after=-1)])
        req.full_pages_reserved -= pages
        self.reserved_pages -= pages
        device = self.req_to_token_pool.device
        self.req_to_token_pool.write_slots(
            torch.full((n,), req.req_pool_idx, device=device),
            torch.arange(n, device=device),
            torch.tensor(req.own_slots, device=device),
        )
        if self.swa_allocator is None:
            return
        tail = self.swa_tail_start(n)
        self._make_room_swa(self.swa_allocator, n - tail)
        req.own_swa_slots = [0] * tail + self.swa_allocator.alloc_for(req.own_slots[tail:])
        req.swa_released_len = tail
        req.swa_slots_reserved -= n - tail
        self.reserved_swa_slots -= n - tail

    def cancel_preallocation(self, req: Request) -> None:
        """Give a pre-allocated request's slots back before its KV ever arrived (an abort)."""
        req.kv_len = req.prompt_len  # everything pre-allocated is the request's own, to free
        self.abort(req)
