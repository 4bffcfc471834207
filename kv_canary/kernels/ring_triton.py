"""Appending violation rows to the device ring from a Triton program: one atomic per block."""

from __future__ import annotations

import triton
import triton.language as tl

from kv_canary.kernels.layout_triton import (
    RING_EXPECTED_PREV_HASH,
    RING_EXPECTED_REAL_KV_HASH,
    RING_EXPECTED_TOKEN,
    RING_FAIL_BITS,
    RING_FIELDS_C,
    RING_LAUNCH_TAG,
    RING_POSITION,
    RING_SLOT,
    RING_STEP,
    RING_STORED_POSITION,
    RING_STORED_PREV_HASH,
    RING_STORED_REAL_KV_HASH,
    RING_STORED_TOKEN,
)


@triton.jit
def append_violations(
    ring_rows_ptr,
    ring_index_ptr,
    ring_capacity,
    violating,
    launch_tag,
    bits,
    slot,
    position,
    stored_token,
    expected_token,
    step,
    stored_position,
    stored_prev_hash,
    expected_prev_hash,
    stored_real_kv_hash,
    expected_real_kv_hash,
):
    """Claim rows for this block's violating lanes with a single atomic add, then store them."""
    count = tl.sum(violating.to(tl.int64), axis=0)
    if count > 0:
        base = tl.atomic_add(ring_index_ptr, count)
        rank = tl.cumsum(violating.to(tl.int64), axis=0) - violating.to(tl.int64)
        row = ring_rows_ptr + ((base + rank) % ring_capacity) * RING_FIELDS_C
        tl.store(row + RING_LAUNCH_TAG, (launch_tag + tl.zeros_like(rank)).to(tl.int64), mask=violating)
        tl.store(row + RING_FAIL_BITS, bits.to(tl.int64), mask=violating)
        tl.store(row + RING_SLOT, slot.to(tl.int64), mask=violating)
        tl.store(row + RING_POSITION, position.to(tl.int64), mask=violating)
        tl.store(row + RING_STORED_TOKEN, stored_token.to(tl.int64), mask=violating)
        tl.store(row + RING_EXPECTED_TOKEN, expected_token.to(tl.int64), mask=violating)
        tl.store(row + RING_STEP, (step + tl.zeros_like(rank)).to(tl.int64), mask=violating)
        tl.store(row + RING_STORED_POSITION, stored_position.to(tl.int64), mask=violating)
        tl.store(row + RING_STORED_PREV_HASH, stored_prev_hash.to(tl.int64, bitcast=True), mask=violating)
        tl.store(row + RING_EXPECTED_PREV_HASH, expected_prev_hash.to(tl.int64, bitcast=True), mask=violating)
        tl.store(row + RING_STORED_REAL_KV_HASH, stored_real_kv_hash.to(tl.int64, bitcast=True), mask=violating)
        tl.store(row + RING_EXPECTED_REAL_KV_HASH, expected_real_kv_hash.to(tl.int64, bitcast=True), mask=violating)
