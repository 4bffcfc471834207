"""Copying KV bytes by address between buffers, as a KV transfer engine does.

SGLang moves KV between engines and tiers by the triples a pool's buffer-info methods return
(``get_contiguous_buf_infos`` for the full pool, ``get_state_buf_infos`` for SWA state): one data
pointer, byte length and item length (bytes of one page) per buffer. The canary's adapters add
its record buffers to those lists (``kv_canary/adapters/buffer_info.py``), so records travel with
the K/V they describe when a mover copies every entry. Both of the mock engine's movers (the
prefill-to-decode transfer and the host tier) copy through ``copy_entries``, by address.

Entries are paired one to one: SGLang's MHA path splits each list into a K half and a V half and
pairs them layer by layer, which pairs the same entries, so both sides must list the same
buffers in the same order with the same item lengths (``pair_buffer_sets`` refuses otherwise, as
SGLang's stride check does). Copies are plain ``ctypes.memmove`` on host memory: the movers run on
CPU pools only (``EngineConfig`` refuses them on CUDA), and every copy is checked against the
buffer it addresses first, so a wrong index is an error, never a stray write.
"""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Sequence

BufInfos = tuple[list[int], list[int], list[int]]  # data pointers, byte lengths, item lengths


class KvCopyError(RuntimeError):
    """A copy between buffer sets that do not match, or outside the buffer it addresses."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class BufferSet:
    """One buffer-info triple, as SGLang's transfer code reads it."""

    pointers: tuple[int, ...]
    lengths: tuple[int, ...]
    item_lengths: tuple[int, ...]

    @classmethod
    def of(cls, infos: BufInfos) -> BufferSet:
        pointers, lengths, item_lengths = (tuple(int(value) for value in values) for values in infos)
        if not len(pointers) == len(lengths) == len(item_lengths):
            raise KvCopyError(
                f"buffer infos of unequal lengths: {len(pointers)} pointers, {len(lengths)} lengths, "
                f"{len(item_lengths)} item lengths"
            )
        return cls(pointers=pointers, lengths=lengths, item_lengths=item_lengths)

    def __len__(self) -> int:
        return len(self.pointers)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class EntryPair:
    source: int  # pointer
    source_length: int
    destination: int
    destination_length: int
    item_length: int


def pair_buffer_sets(source: BufferSet, destination: BufferSet, *, what: str) -> tuple[EntryPair, ...]:
    if len(source) != len(destination) or source.item_lengths != destination.item_lengths:
        raise KvCopyError(
            f"{what}: the two sides list different buffers ({len(source)} entries of item lengths "
            f"{list(source.item_lengths)} against {len(destination)} of {list(destination.item_lengths)}); "
            "both pools must be built alike and guarded alike (canary on on both sides, or off on both)"
        )
    return tuple(
        EntryPair(
            source=source.pointers[i],
            source_length=source.lengths[i],
            destination=destination.pointers[i],
            destination_length=destination.lengths[i],
            item_length=source.item_lengths[i],
        )
        for i in range(len(source))
    )


def copy_entries(
    pairs: Sequence[EntryPair], source_indices: Sequence[int], destination_indices: Sequence[int], *, per_item: int = 1
) -> None:
    """Copy unit ``source_indices[i]`` to unit ``destination_indices[i]`` of every entry pair.

    A unit is an item (a page) when ``per_item`` is 1, one of an item's ``per_item`` parts
    otherwise (a slot, for pools whose slots are handed out one at a time). Runs of consecutive
    indices on both sides are copied at once.
    """
    if len(source_indices) != len(destination_indices):
        raise KvCopyError(f"{len(source_indices)} source units for {len(destination_indices)} destination units")
    runs = _runs(source_indices, destination_indices)
    for pair in pairs:
        unit = pair.item_length // per_item
        for source, destination, count in runs:
            _check(pair.source, pair.source_length, source * unit, count * unit, "source")
            _check(pair.destination, pair.destination_length, destination * unit, count * unit, "destination")
            ctypes.memmove(pair.destination + destination * unit, pair.source + source * unit, count * unit)


def _runs(sources: Sequence[int], destinations: Sequence[int]) -> list[tuple[int, int, int]]:
    runs: list[tuple[int, int, int]] = []
    for source, destination in zip(sources, destinations, strict=True):
        if runs and runs[-1][0] + runs[-1][2] == source and runs[-1][1] + runs[-1][2] == destination:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((source, destination, 1))
    return runs


def _check(pointer: int, length: int, offset: int, size: int, side: str) -> None:
    if offset < 0 or offset + size > length:
        raise KvCopyError(
            f"{side} bytes [{offset}, {offset + size}) are outside the {length}-byte buffer at {pointer:#x}"
        )
