"""Seeing a lost K/V write: poison the new slots' rows before the model runs, look for the poison after.

A forward that skips writing one token's K/V in some layer (or writes it into another slot)
leaves that row as it was, and a TAIL record that hashes the row then agrees with the stale
bytes. So before the model runs, the HEAD write overwrites the first ``POISON_WORDS`` words of
every new slot's row, in every layer of every hashed K/V half, with a fixed pattern; the TAIL
write reports ``lost_write`` for a slot whose row still starts with the pattern in some layer.
The pattern is NaN in every 16-bit float lane, so a model that wrote real K/V never leaves it.
The previous occupant's bytes are never compared: a slot reused for the same token at the same
position legitimately receives identical bytes.
"""

from __future__ import annotations

import torch

from kv_canary.kernels.hash_reference import as_signed64
from kv_canary.real_kv import RealKvSource

POISON = (as_signed64(0x7FF07FE17FD27FC3), as_signed64(0x7FB47FA57F967F87))
POISON_WORDS = len(POISON)


def poisoned_words(real_kv: RealKvSource) -> int:
    return min(POISON_WORDS, real_kv.row_words)


def poison_rows(real_kv: RealKvSource, slots: torch.Tensor, stores: torch.Tensor) -> None:
    """Write the pattern into the leading words of ``slots``' rows (where ``stores``), in every layer."""
    words = poisoned_words(real_kv)
    pattern = torch.tensor(POISON[:words], dtype=torch.int64, device=slots.device)
    # Lanes that store nothing rewrite the padding row with its own words, keeping the scatter sync-free.
    destination = torch.where(stores, slots, 0)
    for layer_words in real_kv.layer_words:
        current = layer_words[destination, :words]
        layer_words[:, :words].index_put_((destination,), torch.where(stores[:, None], pattern[None, :], current))


def lost_write_layers(real_kv: RealKvSource, slots: torch.Tensor) -> torch.Tensor:
    """Per slot, how many layers' rows still start with the whole pattern."""
    words = poisoned_words(real_kv)
    pattern = torch.tensor(POISON[:words], dtype=torch.int64, device=slots.device)
    count = torch.zeros_like(slots)
    for layer_words in real_kv.layer_words:
        count += (layer_words[slots, :words] == pattern[None, :]).all(dim=1).to(count.dtype)
    return count
