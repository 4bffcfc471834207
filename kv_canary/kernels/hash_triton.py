"""The canary's 64-bit hashes as Triton device functions, bit-equal to ``hash_reference``."""

from __future__ import annotations

import triton
import triton.language as tl

from kv_canary.kernels.hash_reference import CHAIN_ANCHOR, GOLDEN, MIX1, MIX2, TOKEN_SALT

CHAIN_ANCHOR_U64: tl.constexpr = tl.constexpr(CHAIN_ANCHOR)
GOLDEN_U64: tl.constexpr = tl.constexpr(GOLDEN)
MIX1_U64: tl.constexpr = tl.constexpr(MIX1)
MIX2_U64: tl.constexpr = tl.constexpr(MIX2)
TOKEN_SALT_U64: tl.constexpr = tl.constexpr(TOKEN_SALT)


@triton.jit
def as_u64(x):
    return x.to(tl.int64).to(tl.uint64, bitcast=True)


@triton.jit
def splitmix64(x):
    z = x + GOLDEN_U64
    z = (z ^ (z >> 30)) * MIX1_U64
    z = (z ^ (z >> 27)) * MIX2_U64
    return z ^ (z >> 31)


@triton.jit
def link_hash(token, position):
    return splitmix64(splitmix64(as_u64(token) ^ TOKEN_SALT_U64) ^ as_u64(position))


@triton.jit
def rotate_left(x, bits):
    bits = (bits % 64).to(tl.uint64)
    safe_right = tl.where(bits == 0, 0, 64 - bits).to(tl.uint64)
    return tl.where(bits == 0, x, (x << bits) | (x >> safe_right))


@triton.jit
def rotate_left_by(x, BITS: tl.constexpr):
    """``rotate_left`` by a constant number of bits."""
    if BITS % 64 == 0:
        return x
    else:
        return (x << (BITS % 64)) | (x >> (64 - BITS % 64))


@triton.jit
def record_hash(token, position, prev_hash):
    return link_hash(token, position) ^ ((prev_hash << 1) | (prev_hash >> 63))


@triton.jit
def word_salt(layer, word):
    return as_u64(word.to(tl.int64) + layer.to(tl.int64) * (1 << 20)) * MIX2_U64


@triton.jit
def real_kv_hash(
    layer_pointers_ptr,
    num_layers,
    row_words,
    hashed_words,
    slots,
    mask,
    LAYER_BLOCK: tl.constexpr,
    WORD_CHUNK: tl.constexpr,
):
    """Hash of each lane's slot row, bit-equal to ``hash_reference.real_kv_row_hash``.

    A [slots, layers, words] tile is loaded at once, so the reads of a block of layers are in
    flight together instead of one layer's latency after another's.
    """
    total = tl.zeros_like(slots).to(tl.uint64)
    rows = slots.to(tl.int64)[:, None, None] * row_words
    layer_lane = tl.arange(0, LAYER_BLOCK)
    word_lane = tl.arange(0, WORD_CHUNK)
    for first_layer in range(0, num_layers, LAYER_BLOCK):
        layers = first_layer + layer_lane
        in_layers = layers < num_layers
        bases = tl.load(layer_pointers_ptr + layers, mask=in_layers, other=0).to(tl.pointer_type(tl.int64))
        for first_word in range(0, hashed_words, WORD_CHUNK):
            words = first_word + word_lane
            loads = (mask[:, None, None] & in_layers[None, :, None]) & (words < hashed_words)[None, None, :]
            values = tl.load(bases[None, :, None] + rows + words[None, None, :], mask=loads, other=0)
            salt = word_salt(layers[:, None], words[None, :])
            terms = splitmix64(as_u64(values) + salt[None, :, :])
            total += tl.sum(tl.sum(tl.where(loads, terms, 0), axis=2), axis=1)
    return splitmix64(total)
