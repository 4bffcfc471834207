"""The device table through which the Triton kernels find each group's and K/V half's real K/V rows."""

from __future__ import annotations

import dataclasses

import torch
import triton

from kv_canary.buffer_group import CanaryBufferGroup
from kv_canary.real_kv import RealKvSource

_MAX_LAYER_BLOCK = 16  # layers whose rows one lane has in flight at once
_MAX_WORD_CHUNK = 8  # words of a row loaded at once


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RealKvTable:
    """Row ``group * halves + half``: (address of the layer pointer table, layers, row words, hashed words).

    The tile constexprs cover the largest source, so that one compiled kernel reads every row.
    """

    table: torch.Tensor  # int64 [rows, 4]; one zero row when nothing is hashed
    hashes: bool
    layer_block: int
    word_chunk: int

    @classmethod
    def of(cls, groups: tuple[CanaryBufferGroup, ...], device: torch.device) -> RealKvTable:
        sources: list[RealKvSource | None] = [half.real_kv for group in groups for half in group.halves.values()]
        present = [source for source in sources if source is not None]
        if not present:
            return cls(
                table=torch.zeros(1, 4, dtype=torch.int64, device=device), hashes=False, layer_block=1, word_chunk=1
            )
        if len(present) != len(sources):
            raise ValueError("kv_canary: real-KV hashing is on for some K/V halves and off for others")
        rows = [
            [source.layer_pointers.data_ptr(), len(source.layer_words), source.row_words, source.hashed_words]
            for source in present
        ]
        return cls(
            table=torch.tensor(rows, dtype=torch.int64, device=device),
            hashes=True,
            layer_block=min(_MAX_LAYER_BLOCK, triton.next_power_of_2(max(len(s.layer_words) for s in present))),
            word_chunk=min(_MAX_WORD_CHUNK, triton.next_power_of_2(max(s.hashed_words for s in present))),
        )
