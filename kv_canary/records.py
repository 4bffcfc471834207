"""Layout of a canary record: four int64 words per slot, one record buffer per phase and K/V half.

A slot's HEAD and TAIL records sit in separate [num_slots, RECORD_WORDS] buffers; 32 bytes a
record keeps every record inside one DRAM sector.
"""

from __future__ import annotations

import enum

import torch


class RecordWord(enum.IntEnum):
    TOKEN = 0
    POSITION = 1
    PREV_HASH = 2  # record_hash of the predecessor's record, or CHAIN_ANCHOR at position 0
    REAL_KV_HASH = 3  # TAIL records only; HEAD records keep 0


RECORD_WORDS = len(RecordWord)


def allocate_records(num_slots: int, device: torch.device | str) -> torch.Tensor:
    return torch.zeros(num_slots, RECORD_WORDS, dtype=torch.int64, device=device)
