"""The SWA sub-pool allocator and the full-to-SWA index map it owns.

``full_to_swa_index_mapping[full_slot]`` is the SWA slot holding that position's window-layer
K/V, or 0 when it is not resident (slid out of the window, or SWA-evicted from the radix
cache). SWA slots are handed out one token at a time: releasing is per position as the window
slides, so pages would only add rounding. Slots ``[0, page_size)`` are padding, as in the full
pool, so SWA buffers have ``size + page_size`` rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mock_models.engine.allocator import FreeList

NOT_RESIDENT = 0


class SWATokenAllocator:
    def __init__(
        self, *, size: int, page_size: int, full_pool_rows: int, device: torch.device | str, strict: bool = False
    ) -> None:
        self.size = size
        self.page_size = page_size
        self.device = torch.device(device)
        # One spare entry past the last full slot, as SGLang sizes it.
        self.full_to_swa_index_mapping = torch.zeros(full_pool_rows + 1, dtype=torch.int64, device=self.device)
        self._slots = FreeList(first=page_size, count=size, what="SWA slot", strict=strict)

    @property
    def double_free_count(self) -> int:
        return self._slots.double_free_count

    def available_size(self) -> int:
        return len(self._slots)

    def alloc_for(self, full_slots: Sequence[int]) -> list[int]:
        """Give each full slot a fresh SWA slot and record it in the map."""
        swa_slots = self._slots.pop(len(full_slots))
        if swa_slots:
            self.full_to_swa_index_mapping[self._index(full_slots)] = self._index(swa_slots)
        return swa_slots

    def release(self, full_slots: Sequence[int], swa_slots: Sequence[int]) -> None:
        """Free the SWA slots of positions a request owns privately; their map entries become 0.

        The caller passes the SWA slots it recorded at allocation, so no device read is needed.
        """
        if not full_slots:
            return
        self.full_to_swa_index_mapping[self._index(full_slots)] = NOT_RESIDENT
        self._slots.push(swa_slots)

    def free_swa(self, full_slots: torch.Tensor) -> None:
        """Free whatever SWA slots the map gives for ``full_slots`` (a radix node's value)."""
        if full_slots.numel() == 0:
            return
        full_slots = full_slots.to(self.device, torch.int64)
        # Host read of the map: only on radix eviction, never per token.
        swa_slots = self.full_to_swa_index_mapping[full_slots].tolist()
        self.full_to_swa_index_mapping[full_slots] = NOT_RESIDENT
        self._slots.push(slot for slot in swa_slots if slot != NOT_RESIDENT)

    def free_slots_unchecked(self, swa_slots: Sequence[int]) -> None:
        """Fault-injection path: return SWA slots to the free list without the double-free check."""
        self._slots.push_unchecked(swa_slots)

    def _index(self, values: Sequence[int]) -> torch.Tensor:
        return torch.tensor(list(values), dtype=torch.int64, device=self.device)
