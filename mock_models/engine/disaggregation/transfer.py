"""Moving one request's KV and canary records from the prefill engine's pools to the decode engine's.

As SGLang's PD disaggregation does: the full pool moves by pages (every position of the prompt,
``get_contiguous_buf_infos``), the SWA state moves for the window the decode engine reads first
(positions from ``align_down(prompt_len - window)``, ``get_state_buf_infos``); each entry of the
prefill side's buffer lists goes to the same entry of the decode side's, the canary's record
buffers among them. The mock engine's SWA allocator hands SWA slots out one at a time, so the SWA
state moves slot by slot (an item of those buffers is a page of ``page_size`` slots).

A ``TransferPlan`` is what one transfer moves; a fault in the transfer is a changed plan
(``with_group_dropped``, ``with_pages_misordered``, ``with_source_of``), which the decode side then
reads as it arrived.
"""

from __future__ import annotations

import dataclasses

from kv_canary_contract import PoolGroup
from mock_models.engine.kv_copy import BufferSet, EntryPair, copy_entries, pair_buffer_sets


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TransferPlan:
    rid: str
    source_pages: tuple[int, ...]
    destination_pages: tuple[int, ...]
    source_swa_slots: tuple[int, ...]
    destination_swa_slots: tuple[int, ...]
    moves_full: bool = True
    moves_swa: bool = True

    def units(self, group: PoolGroup) -> int:
        return len(self.destination_pages) if group == "full" else len(self.destination_swa_slots)

    def with_group_dropped(self, group: PoolGroup) -> TransferPlan:
        return dataclasses.replace(
            self, moves_full=group != "full" and self.moves_full, moves_swa=group != "swa" and self.moves_swa
        )

    def with_pages_misordered(self, group: PoolGroup) -> TransferPlan:
        """Each source page (SWA slot) of ``group`` lands in the destination of the next one."""
        if group == "full":
            return dataclasses.replace(self, source_pages=_rotated(self.source_pages))
        return dataclasses.replace(self, source_swa_slots=_rotated(self.source_swa_slots))

    def with_source_of(self, donor: TransferPlan) -> TransferPlan:
        """Another request's pages (and SWA slots), as far as the donor reaches."""
        pages, slots = len(donor.source_pages), len(donor.source_swa_slots)
        return dataclasses.replace(
            self,
            source_pages=donor.source_pages[: len(self.source_pages)] + self.source_pages[pages:],
            source_swa_slots=donor.source_swa_slots[: len(self.source_swa_slots)] + self.source_swa_slots[slots:],
        )


class KvTransfer:
    def __init__(self, *, source_pool: object, destination_pool: object, page_size: int) -> None:
        self._source_pool = source_pool
        self._destination_pool = destination_pool
        self.page_size = page_size
        self._pairs: tuple[tuple[EntryPair, ...], tuple[EntryPair, ...] | None] | None = None
        self.transfers = 0

    def run(self, plan: TransferPlan) -> None:
        full, swa = self._entry_pairs()
        if plan.moves_full:
            copy_entries(full, plan.source_pages, plan.destination_pages)
        if plan.moves_swa and swa is not None:
            copy_entries(swa, plan.source_swa_slots, plan.destination_swa_slots, per_item=self.page_size)
        self.transfers += 1

    def _entry_pairs(self) -> tuple[tuple[EntryPair, ...], tuple[EntryPair, ...] | None]:
        # Read at the first transfer: both canaries have added their record buffers to the lists by then.
        if self._pairs is None:
            full = pair_buffer_sets(
                _buffers(self._source_pool, "get_contiguous_buf_infos"),
                _buffers(self._destination_pool, "get_contiguous_buf_infos"),
                what="full pool transfer",
            )
            swa = None
            if hasattr(self._source_pool, "get_state_buf_infos"):
                swa = pair_buffer_sets(
                    _buffers(self._source_pool, "get_state_buf_infos"),
                    _buffers(self._destination_pool, "get_state_buf_infos"),
                    what="SWA state transfer",
                )
            self._pairs = (full, swa)
        return self._pairs


def _buffers(pool: object, method: str) -> BufferSet:
    return BufferSet.of(getattr(pool, method)())


def _rotated(values: tuple[int, ...]) -> tuple[int, ...]:
    return values[-1:] + values[:-1]
