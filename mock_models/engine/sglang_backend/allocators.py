"""The engine's slot allocators on SGLang's token allocators, paged or not.

SGLang allocates a forward's slots in one call on its top-level allocator, which for hybrid SWA
pools (``SWATokenToKVPoolAllocator``) takes the SWA slots and sets ``full_to_swa_index_mapping``
in the same call: ``alloc`` with ``page_size`` 1, ``alloc_extend`` / ``alloc_decode`` (each
request continuing its last page from ``last_loc``, then fresh pages) with larger pages. The
engine's full-slot allocator makes that call; its SWA-slot allocator then reads the SWA slots the
call mapped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator

from mock_models.engine.allocator import OutOfSlotsError
from mock_models.engine.memory_protocols import ExtendSpan


def as_index_tensor(values: Iterable[int], device: torch.device | str) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.int64, device=device)


class SglangFullAllocator:
    """The engine's ``FullSlotAllocator`` on SGLang's top-level token allocator.

    ``allocator``: ``TokenToKVPoolAllocator`` or ``PagedTokenToKVPoolAllocator`` (mha),
    ``SWATokenToKVPoolAllocator`` (swa: it allocates both pools). ``full_pool``: the allocator
    whose free list is the full pool's (the same one in mha, ``full_attn_allocator`` in swa).
    ``free``: how the engine's frees reach SGLang (swa: ``free_full``, after the SWA rows).
    """

    double_free_count = 0  # SGLang's allocators keep no free flags to tell

    def __init__(self, allocator: Any, *, full_pool: Any, free: Callable[[torch.Tensor], None]) -> None:
        self.allocator = allocator
        self.full_pool = full_pool
        self.page_size: int = allocator.page_size
        self.size = int(full_pool.size)
        self.num_pages = self.size // self.page_size
        self.device = torch.device(allocator.device)
        self._free = free

    def available_pages(self) -> int:
        return self.available_size() // self.page_size

    def available_size(self) -> int:
        return int(self.full_pool.available_size())

    def alloc_extend(self, spans: Sequence[ExtendSpan]) -> list[int]:
        total = sum(span.extend_len for span in spans)
        if total == 0:
            return []
        if self.page_size == 1:
            slots = self.allocator.alloc(total)
        elif all(span.extend_len == 1 and span.prefix_len > 0 for span in spans):
            seq_lens = [span.prefix_len + 1 for span in spans]
            slots = self.allocator.alloc_decode(
                self._tensor(seq_lens), torch.tensor(seq_lens), self._tensor(span.continue_after for span in spans)
            )
        else:
            prefix_lens = [span.prefix_len for span in spans]
            seq_lens = [span.prefix_len + span.extend_len for span in spans]
            slots = self.allocator.alloc_extend(
                self._tensor(prefix_lens),
                torch.tensor(prefix_lens),
                self._tensor(seq_lens),
                torch.tensor(seq_lens),
                self._tensor(span.continue_after for span in spans),
                total,
            )
        if slots is None:
            raise OutOfSlotsError(
                f"SGLang's {type(self.allocator).__name__} could not give {total} slots over {len(spans)} requests "
                f"({self.available_size()} full-pool slots free of {self.size}); the scheduler's room-making is wrong"
            )
        return list(slots.tolist())

    def _tensor(self, values: Iterable[int]) -> torch.Tensor:
        return as_index_tensor(values, self.device)

    def free(self, slots: Iterable[int]) -> None:
        slots = list(slots)
        if slots:
            self._free(self._tensor(slots))

    def free_slots_unchecked(self, slots: Iterable[int]) -> None:
        """Fault-injection path: hand the pages of ``slots`` back to SGLang's allocator while in use."""
        free_to_front(self.full_pool, list(slots))


class SglangSwaAllocator:
    """The engine's ``SwaSlotAllocator`` on ``SWATokenToKVPoolAllocator``, which owns the map."""

    double_free_count = 0

    def __init__(self, allocator: SWATokenToKVPoolAllocator) -> None:
        self.allocator = allocator
        self.page_size: int = allocator.page_size
        self.size: int = allocator.size_swa // self.page_size * self.page_size
        self.device = torch.device(allocator.device)
        self.full_to_swa_index_mapping: torch.Tensor = allocator.full_to_swa_index_mapping

    def available_size(self) -> int:
        return int(self.allocator.swa_available_size())

    def alloc_for(self, full_slots: Sequence[int]) -> list[int]:
        """The SWA slots SGLang's allocation of ``full_slots`` took and mapped (read back, host read)."""
        if not full_slots:
            return []
        return list(self.full_to_swa_index_mapping[as_index_tensor(full_slots, self.device)].tolist())

    def release(self, full_slots: Sequence[int], swa_slots: Sequence[int]) -> None:
        """Free the SWA rows of private positions: whole pages, as the engine releases them."""
        if not full_slots:
            return
        self.allocator.clear_full_to_swa_mapping(as_index_tensor(full_slots, self.device))
        self.allocator.swa_attn_allocator.free(as_index_tensor(swa_slots, self.device))

    def free_swa(self, full_slots: torch.Tensor) -> None:
        """Free whatever SWA rows the map gives for ``full_slots``; unmapped ones have none."""
        full_slots = full_slots.to(self.device, torch.int64)
        resident = full_slots[self.full_to_swa_index_mapping[full_slots] > 0]
        if resident.numel():
            self.allocator.free_swa(resident)

    def free_slots_unchecked(self, swa_slots: Sequence[int]) -> None:
        """Fault-injection path: hand the pages of SWA slots back while in use; their map entries stay."""
        free_to_front(self.allocator.swa_attn_allocator, list(swa_slots))


def free_to_front(allocator: Any, slots: list[int]) -> None:
    """Put the pages of ``slots`` first in the allocator's free list, so the next allocation hands
    them out (``TokenToKVPoolAllocator``'s pages are its slots).

    SGLang's ``free`` puts freed pages at the back, or sorts them (``need_sort``), and in a roomy
    pool a page freed there is handed out again only after every older free page: a double free
    would then stay latent for many forwards. A busy engine reuses it soon, as the engine's own
    allocator (lowest index first) does; this is what a fault scenario's detection bound assumes.
    """
    pages = list(dict.fromkeys(slot // allocator.page_size for slot in slots))
    if pages:
        allocator.free_pages = torch.cat([as_index_tensor(pages, allocator.device), allocator.free_pages])
