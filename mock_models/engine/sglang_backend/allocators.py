"""The engine's slot allocators on SGLang's token allocators (page_size 1: a page is a slot)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator
from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator

from mock_models.engine.allocator import OutOfSlotsError


def as_index_tensor(values: Iterable[int], device: torch.device | str) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.int64, device=device)


class SglangFullAllocator:
    """The engine's ``FullSlotAllocator`` on an SGLang token allocator."""

    page_size = 1
    double_free_count = 0  # SGLang's allocators keep no free flags to tell

    def __init__(self, allocator: Any, *, free: Callable[[torch.Tensor], None]) -> None:
        self.allocator = allocator
        self.num_pages = self.size = int(allocator.size)
        self._free = free  # SWA: free_full, which expects the slots' SWA rows released first

    def available_pages(self) -> int:
        return int(self.allocator.available_size())

    def available_size(self) -> int:
        return int(self.allocator.available_size())

    def alloc_slots(self, num_pages: int) -> list[int]:
        slots = self.allocator.alloc(num_pages) if num_pages else torch.zeros(0, dtype=torch.int64)
        if slots is None:
            raise OutOfSlotsError(f"asked for {num_pages} slots, {self.available_size()} free of {self.size}")
        return list(slots.tolist())

    def free(self, slots: Iterable[int]) -> None:
        slots = list(slots)
        if slots:
            self._free(as_index_tensor(slots, self.allocator.device))

    def free_slots_unchecked(self, slots: Iterable[int]) -> None:
        """Fault-injection path: hand ``slots`` back to SGLang's allocator while in use."""
        free_to_front(self.allocator, list(slots))


class SglangSwaAllocator:
    """The engine's ``SwaSlotAllocator`` on ``SWATokenToKVPoolAllocator``, which owns the map."""

    double_free_count = 0

    def __init__(self, allocator: SWATokenToKVPoolAllocator) -> None:
        self.allocator = allocator
        self.size: int = allocator.size_swa
        self.page_size = 1
        self.device = torch.device(allocator.device)
        self.full_to_swa_index_mapping: torch.Tensor = allocator.full_to_swa_index_mapping

    def available_size(self) -> int:
        return int(self.allocator.swa_available_size())

    def alloc_for(self, full_slots: Sequence[int]) -> list[int]:
        if not full_slots:
            return []
        swa_slots = self.allocator.swa_attn_allocator.alloc(len(full_slots))
        if swa_slots is None:
            raise OutOfSlotsError(f"asked for {len(full_slots)} SWA slots, {self.available_size()} free")
        self.allocator.set_full_to_swa_mapping(as_index_tensor(full_slots, self.device), swa_slots)
        return list(swa_slots.tolist())

    def release(self, full_slots: Sequence[int], swa_slots: Sequence[int]) -> None:
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
        """Fault-injection path: hand SWA slots back while in use; their map entries stay."""
        free_to_front(self.allocator.swa_attn_allocator, list(swa_slots))


def free_to_front(allocator: TokenToKVPoolAllocator, slots: list[int]) -> None:
    """Put ``slots`` first in the allocator's free list, so the next allocation hands them out.

    SGLang's ``free`` appends to the back, and in a roomy pool a slot freed there is handed out
    again only after every older free slot: a double free would then stay latent for many
    forwards. A busy engine reuses it soon, as the engine's own allocator (lowest index first)
    does; this is what a fault scenario's detection bound assumes.
    """
    if slots:
        allocator.free_pages = torch.cat([as_index_tensor(slots, allocator.device), allocator.free_pages])
