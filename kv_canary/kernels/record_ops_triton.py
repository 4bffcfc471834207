"""Device functions shared by the per-forward and sweep kernels: read, check and write canary records.

Records are read as one [BLOCK, RECORD_WORDS] tile per launch of lanes (32 bytes a slot, one DRAM
sector) and split into their words; the word order is ``RecordWord``'s, checked at import.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kv_canary.kernels.hash_triton import CHAIN_ANCHOR_U64, as_u64, real_kv_hash, record_hash, rotate_left_by
from kv_canary.kernels.layout_triton import (
    FAIL_CHAIN_HASH,
    FAIL_LOST_WRITE,
    FAIL_POSITION,
    FAIL_REAL_KV_HASH,
    FAIL_TOKEN,
    PREV_SEQUENCE_START_C,
    RECORD_WORDS_C,
    WORD_POSITION,
    WORD_PREV_HASH,
    WORD_REAL_KV_HASH,
    WORD_TOKEN,
)
from kv_canary.kernels.lost_write_reference import POISON
from kv_canary.kernels.real_kv_table import RealKvField
from kv_canary.records import RecordWord

if [int(word) for word in RecordWord] != [0, 1, 2, 3]:
    raise ImportError(
        "kv_canary.kernels.record_ops_triton splits a record tile as token, position, prev_hash, real_kv_hash; "
        "RecordWord changed its order, so update load_records with it"
    )

POISON_0: tl.constexpr = tl.constexpr(POISON[0])
POISON_1: tl.constexpr = tl.constexpr(POISON[1])
REAL_KV_FIELDS: tl.constexpr = tl.constexpr(len(RealKvField))
REAL_KV_LAYER_TABLE: tl.constexpr = tl.constexpr(int(RealKvField.LAYER_TABLE))
REAL_KV_LAYERS: tl.constexpr = tl.constexpr(int(RealKvField.LAYERS))
REAL_KV_ROW_WORDS: tl.constexpr = tl.constexpr(int(RealKvField.ROW_WORDS))
REAL_KV_HASHED_WORDS: tl.constexpr = tl.constexpr(int(RealKvField.HASHED_WORDS))


@triton.jit
def load_records(records_ptr, slot, mask):
    """(token, position, prev_hash as u64, real_kv_hash as u64) of each lane's slot."""
    words = tl.load(
        records_ptr + slot.to(tl.int64)[:, None] * RECORD_WORDS_C + tl.arange(0, RECORD_WORDS_C)[None, :],
        mask=mask[:, None],
        other=0,
    )
    even, odd = tl.split(tl.reshape(words, (words.shape[0], 2, 2)))
    token, prev_hash = tl.split(even)
    position, real_kv = tl.split(odd)
    return token, position, as_u64(prev_hash), as_u64(real_kv)


@triton.jit
def check_records(
    records_ptr, slot, pred_slot, expected_position, expected_token, active, from_left, lane, CHECK_TOKENS: tl.constexpr
):
    """Fail bits of each lane's record against its expected position, token and chain predecessor.

    ``from_left`` lanes take the predecessor's hash from the lane to their left, whose own slot
    is the predecessor; the others read the predecessor's record. ``pred_slot`` is a slot,
    ``PREV_SEQUENCE_START`` (expect ``CHAIN_ANCHOR``) or ``PREV_UNKNOWN`` (no chain check).
    """
    token, position, prev_hash, stored_real_kv = load_records(records_ptr, slot, active)
    own_hash = record_hash(token, position, prev_hash)
    load_pred = active & (pred_slot > 0) & ~from_left
    pred_token, pred_position, pred_prev_hash, _ = load_records(records_ptr, tl.maximum(pred_slot, 0), load_pred)
    left = tl.maximum(lane - 1, 0)
    pred_hash = tl.where(
        from_left, tl.gather(own_hash, left, 0), record_hash(pred_token, pred_position, pred_prev_hash)
    )
    expected_prev_hash = tl.where(
        pred_slot == PREV_SEQUENCE_START_C, tl.zeros_like(pred_hash) + CHAIN_ANCHOR_U64, pred_hash
    )
    bits = tl.where(position != expected_position, FAIL_POSITION, 0)
    bits |= tl.where((pred_slot >= 0) & (prev_hash != expected_prev_hash), FAIL_CHAIN_HASH, 0)
    if CHECK_TOKENS:
        bits |= tl.where((expected_token >= 0) & (token != expected_token), FAIL_TOKEN, 0)
    return bits, token, position, prev_hash, expected_prev_hash, stored_real_kv


@triton.jit
def real_kv_source(table_ptr, index):
    """(layer pointer table, layers, row words, hashed words) of descriptor row ``index``."""
    row = table_ptr + index * REAL_KV_FIELDS
    layers = tl.load(row + REAL_KV_LAYER_TABLE).to(tl.pointer_type(tl.int64))
    return layers, tl.load(row + REAL_KV_LAYERS), tl.load(row + REAL_KV_ROW_WORDS), tl.load(row + REAL_KV_HASHED_WORDS)


@triton.jit
def check_real_kv(
    bits, table_ptr, index, slot, active, stored_real_kv, LAYER_BLOCK: tl.constexpr, WORD_CHUNK: tl.constexpr
):
    layers, num_layers, row_words, hashed_words = real_kv_source(table_ptr, index)
    expected = real_kv_hash(layers, num_layers, row_words, hashed_words, slot, active, LAYER_BLOCK, WORD_CHUNK)
    return bits | tl.where(stored_real_kv != expected, FAIL_REAL_KV_HASH, 0), expected


@triton.jit
def scan_chain(prev_link, has_prev, carry, LOG2_BLOCK: tl.constexpr):
    """``D`` of each entry of a run, such that ``prev_hash = rotl(first_prev_hash, offset) ^ D``.

    ``D`` folds the link hashes of the run's earlier entries: ``D = link(previous) ^ rotl(D of the
    previous entry, 1)``, 0 at the run's first entry. ``prev_link`` is the link hash of the entry
    before each lane (ignored where ``has_prev`` is false: the run's first entry, lanes past its
    end); ``carry`` is the ``D`` of the entry just before this block (0 at the run's start).
    A Hillis-Steele scan: after step ``s`` each lane folds the ``2**s`` lanes before it, rotated by
    their distance. Returns (D, the block's last D).
    """
    lane = tl.arange(0, prev_link.shape[0])
    chain = tl.where(has_prev, prev_link, 0)
    chain ^= tl.where((lane == 0) & has_prev, rotate_left_by(carry + tl.zeros_like(chain), 1), 0)
    for step in tl.static_range(LOG2_BLOCK):
        earlier = tl.gather(chain, tl.maximum(lane - (1 << step), 0), 0)
        chain ^= tl.where(lane >= (1 << step), rotate_left_by(earlier, 1 << step), 0)
    return chain, tl.sum(tl.where(lane == prev_link.shape[0] - 1, chain, 0), axis=0)


@triton.jit
def store_records(records_ptr, slot, stores, token, position, prev_hash, real_kv):
    record = records_ptr + slot.to(tl.int64) * RECORD_WORDS_C
    tl.store(record + WORD_TOKEN, token.to(tl.int64), mask=stores)
    tl.store(record + WORD_POSITION, position.to(tl.int64), mask=stores)
    tl.store(record + WORD_PREV_HASH, prev_hash.to(tl.int64, bitcast=True), mask=stores)
    tl.store(record + WORD_REAL_KV_HASH, real_kv.to(tl.int64, bitcast=True), mask=stores)


@triton.jit
def poison_rows(table_ptr, index, slot, stores, LAYER_BLOCK: tl.constexpr):
    """Write the lost-write pattern into the leading words of each storing lane's row, in every layer."""
    layers, num_layers, row_words, _ = real_kv_source(table_ptr, index)
    rows = slot.to(tl.int64)[:, None] * row_words
    lane = tl.arange(0, LAYER_BLOCK)
    for first_layer in range(0, num_layers, LAYER_BLOCK):
        layer = first_layer + lane
        in_layers = layer < num_layers
        bases = tl.load(layers + layer, mask=in_layers, other=0).to(tl.pointer_type(tl.int64))
        mask = stores[:, None] & in_layers[None, :]
        tl.store(bases[None, :] + rows, tl.zeros_like(rows) + POISON_0, mask=mask)
        tl.store(
            bases[None, :] + rows + 1,
            tl.zeros_like(rows) + POISON_1,
            mask=mask & ((tl.zeros_like(rows) + row_words) > 1),
        )


@triton.jit
def check_lost_writes(bits, table_ptr, index, slot, stores, LAYER_BLOCK: tl.constexpr):
    """``lost_write`` where some layer's row of the slot still starts with the whole pattern."""
    layers, num_layers, row_words, _ = real_kv_source(table_ptr, index)
    rows = slot.to(tl.int64)[:, None] * row_words
    lane = tl.arange(0, LAYER_BLOCK)
    lost = tl.zeros_like(slot).to(tl.int32)
    for first_layer in range(0, num_layers, LAYER_BLOCK):
        layer = first_layer + lane
        in_layers = layer < num_layers
        bases = tl.load(layers + layer, mask=in_layers, other=0).to(tl.pointer_type(tl.int64))
        mask = stores[:, None] & in_layers[None, :]
        first = tl.load(bases[None, :] + rows, mask=mask, other=0)
        second = tl.load(bases[None, :] + rows + 1, mask=mask & ((tl.zeros_like(rows) + row_words) > 1), other=POISON_1)
        poisoned = mask & (first == POISON_0) & (second == POISON_1)
        lost += tl.sum(poisoned.to(tl.int32), axis=1)
    return bits | tl.where(lost > 0, FAIL_LOST_WRITE, 0)
