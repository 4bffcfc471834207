"""The canary's 64-bit hashes on int64 torch tensors (two's-complement wrap-around).

torch has no uint64 arithmetic, so the unsigned operations are spelled out: multiplication and
addition wrap identically for signed and unsigned words, and a logical right shift is an
arithmetic shift followed by a mask. ``hash_triton`` computes the same bits with tl.uint64.
"""

from __future__ import annotations

import torch


def as_signed64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
TOKEN_SALT = 0x243F6A8885A308D3
# prev_hash of a sequence's first slot; never zero, so a never-written (all-zero) record fails.
CHAIN_ANCHOR = 0x6B765F63616E6172


def _shift_right_logical(x: torch.Tensor, bits: int) -> torch.Tensor:
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    z = x + as_signed64(GOLDEN)
    z = (z ^ _shift_right_logical(z, 30)) * as_signed64(MIX1)
    z = (z ^ _shift_right_logical(z, 27)) * as_signed64(MIX2)
    return z ^ _shift_right_logical(z, 31)


def link_hash(token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    return splitmix64(splitmix64(token.to(torch.int64) ^ as_signed64(TOKEN_SALT)) ^ position.to(torch.int64))


def rotate_left(x: torch.Tensor, bits: torch.Tensor | int) -> torch.Tensor:
    """Rotate each word left by ``bits`` (taken mod 64)."""
    bits = torch.as_tensor(bits, dtype=torch.int64, device=x.device) % 64
    # A shift by 64 is undefined on the device side, so rotation by 0 takes its own branch here too.
    right = torch.where(bits == 0, torch.zeros_like(x), (x >> (64 - bits)) & ((1 << bits) - 1))
    return torch.where(bits == 0, x, (x << bits) | right)


def record_hash(token: torch.Tensor, position: torch.Tensor, prev_hash: torch.Tensor) -> torch.Tensor:
    """Hash of a canary record; the successor slot stores it as its ``prev_hash``.

    Linear in ``prev_hash`` (a rotation and an xor), so a run of new slots can be chained by a
    parallel scan instead of one slot after another, while every hash still depends on every
    earlier token of the sequence.
    """
    return link_hash(token, position) ^ rotate_left(prev_hash, 1)


def word_salt(layer: int, word: torch.Tensor) -> torch.Tensor:
    return (word.to(torch.int64) + (layer << 20)) * as_signed64(MIX2)


def real_kv_row_hash(rows_per_layer: list[torch.Tensor]) -> torch.Tensor:
    """Hash of each slot's real K/V words: ``rows_per_layer[l]`` is [num_slots, words] int64.

    A wrapping sum of per-word mixes, so the order of the summation (threads, blocks) does not
    change the result; the word's layer and index are salted in so that moved words differ.
    """
    layer_sums = []
    for layer, rows in enumerate(rows_per_layer):
        words = torch.arange(rows.shape[1], device=rows.device)
        terms = splitmix64(rows + word_salt(layer, words)[None, :])
        layer_sums.append(terms.sum(dim=1, dtype=torch.int64))
    total = layer_sums[0]
    for layer_sum in layer_sums[1:]:
        total = total + layer_sum
    return splitmix64(total)
