"""The device table through which the Triton kernels find each group's and K/V half's real K/V rows."""

from __future__ import annotations

import dataclasses
import enum

import torch
import triton

from kv_canary.buffer_group import CanaryBufferGroup
from kv_canary.real_kv import RealKvSource

_MAX_LAYER_BLOCK = 16  # layers whose rows one lane has in flight at once
_MAX_WORD_CHUNK = 8  # words of a row loaded at once


class RealKvField(enum.IntEnum):
    """Columns of a row of the table (int64)."""

    LAYER_TABLE = 0  # address of the int64 table of the layers' row addresses
    LAYERS = 1
    ROW_WORDS = 2  # int64 words per slot row
    HASHED_WORDS = 3  # leading words of each row folded into the hash


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RealKvTable:
    """Row ``group * halves + half`` describes that K/V half's real K/V (``RealKvField``).

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
            empty = torch.zeros(1, len(RealKvField), dtype=torch.int64, device=device)
            return cls(table=empty, hashes=False, layer_block=1, word_chunk=1)
        if len(present) != len(sources):
            raise ValueError("kv_canary: real-KV hashing is on for some K/V halves and off for others")
        rows = []
        for source in present:
            row = [0] * len(RealKvField)
            row[RealKvField.LAYER_TABLE] = source.layer_pointers.data_ptr()
            row[RealKvField.LAYERS] = len(source.layer_words)
            row[RealKvField.ROW_WORDS] = source.row_words
            row[RealKvField.HASHED_WORDS] = source.hashed_words
            rows.append(row)
        return cls(
            table=torch.tensor(rows, dtype=torch.int64, device=device),
            hashes=True,
            layer_block=min(_MAX_LAYER_BLOCK, triton.next_power_of_2(max(len(s.layer_words) for s in present))),
            word_chunk=min(_MAX_WORD_CHUNK, triton.next_power_of_2(max(s.hashed_words for s in present))),
        )
