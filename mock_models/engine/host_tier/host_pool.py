"""Host memory for offloaded KV: a mirror of the device pool's buffer sets, with its own free lists.

Every entry of the device pool's full buffer set (``get_contiguous_buf_infos``: K/V per layer and
the canary's FULL records, or DSv4's compressed pool) gets a host buffer of ``pages`` items, and
every entry of its SWA state set (``get_state_buf_infos``: the SWA sub-pool's K/V and the canary's
SWA records) a host buffer of ``slots`` slots. A ``HostCopy`` is the host pages (and SWA slots) one
offloaded radix node occupies; the bytes are the device's, records included, so a node loaded
back verifies wherever it lands.
"""

from __future__ import annotations

import dataclasses

import torch

from mock_models.engine.allocator import FreeList
from mock_models.engine.kv_copy import BufferSet, EntryPair, copy_entries, pair_buffer_sets


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class HostCopy:
    pages: list[int]  # host pages, one per device page of the node
    swa_slots: list[int] | None  # host SWA slots, one per token; None: the node had no SWA rows
    swa_slots_at_offload: list[int]  # the device SWA slots the node's tokens had when offloaded (0: none)

    def split(self, *, tokens: int, page_size: int) -> tuple[HostCopy, HostCopy]:
        """The copy of a node's first ``tokens`` (whole pages) and of the rest."""
        pages = tokens // page_size
        swa = self.swa_slots
        return (
            HostCopy(
                pages=self.pages[:pages],
                swa_slots=None if swa is None else swa[:tokens],
                swa_slots_at_offload=self.swa_slots_at_offload[:tokens],
            ),
            HostCopy(
                pages=self.pages[pages:],
                swa_slots=None if swa is None else swa[tokens:],
                swa_slots_at_offload=self.swa_slots_at_offload[tokens:],
            ),
        )


class _HostMirror:
    """Host buffers shaped like one device buffer set: ``units`` items (``per_item`` units each)."""

    def __init__(self, device: BufferSet, *, units: int, per_item: int, what: str) -> None:
        self.per_item = per_item
        self._buffers = [
            torch.zeros(units * (item_length // per_item), dtype=torch.uint8) for item_length in device.item_lengths
        ]
        host = BufferSet(
            pointers=tuple(buffer.data_ptr() for buffer in self._buffers),
            lengths=tuple(buffer.nbytes for buffer in self._buffers),
            item_lengths=device.item_lengths,
        )
        self.to_host: tuple[EntryPair, ...] = pair_buffer_sets(device, host, what=f"{what} offload")
        self.to_device: tuple[EntryPair, ...] = pair_buffer_sets(host, device, what=f"{what} load-back")
        self.within_host: tuple[EntryPair, ...] = pair_buffer_sets(host, host, what=f"{what} host copy")


class HostKvPool:
    def __init__(self, *, full: BufferSet, state: BufferSet | None, tokens: int, page_size: int) -> None:
        self.page_size = page_size
        self._full = _HostMirror(full, units=tokens // page_size, per_item=1, what="full pool")
        self._state = None if state is None else _HostMirror(state, units=tokens, per_item=page_size, what="SWA state")
        self.free_pages = FreeList(first=0, count=tokens // page_size, what="host page", strict=True)
        self.free_swa_slots = FreeList(first=0, count=tokens, what="host SWA slot", strict=True)

    def fits(self, *, pages: int, swa_slots: int) -> bool:
        return len(self.free_pages) >= pages and len(self.free_swa_slots) >= swa_slots

    def backup(self, *, device_pages: list[int], device_swa_slots: list[int], resident: bool) -> HostCopy:
        """Copy device pages (and, ``resident``, their SWA rows) to fresh host space; call ``fits`` first."""
        pages = self.free_pages.pop(len(device_pages))
        copy_entries(self._full.to_host, device_pages, pages)
        swa_slots = None
        if resident and self._state is not None:
            swa_slots = self.free_swa_slots.pop(len(device_swa_slots))
            copy_entries(self._state.to_host, device_swa_slots, swa_slots, per_item=self._state.per_item)
        return HostCopy(pages=pages, swa_slots=swa_slots, swa_slots_at_offload=device_swa_slots)

    def restore(self, copy: HostCopy, *, device_pages: list[int], device_swa_slots: list[int] | None) -> None:
        copy_entries(self._full.to_device, copy.pages, device_pages)
        if device_swa_slots is not None and copy.swa_slots is not None and self._state is not None:
            copy_entries(self._state.to_device, copy.swa_slots, device_swa_slots, per_item=self._state.per_item)

    def overwrite(self, copy: HostCopy, *, with_copy: HostCopy) -> int:
        """Write ``with_copy``'s bytes over ``copy``'s host space (as far as both reach); returns the pages."""
        pages = min(len(copy.pages), len(with_copy.pages))
        copy_entries(self._full.within_host, with_copy.pages[:pages], copy.pages[:pages])
        if copy.swa_slots is not None and with_copy.swa_slots is not None and self._state is not None:
            slots = min(len(copy.swa_slots), len(with_copy.swa_slots))
            copy_entries(
                self._state.within_host,
                with_copy.swa_slots[:slots],
                copy.swa_slots[:slots],
                per_item=self._state.per_item,
            )
        return pages

    def release(self, copy: HostCopy) -> None:
        self.free_pages.push(copy.pages)
        if copy.swa_slots is not None:
            self.free_swa_slots.push(copy.swa_slots)
