"""Appending violation rows to the device ring from a Triton program: one atomic per block."""

from __future__ import annotations

import triton
import triton.language as tl

from kv_canary.device_state import RING_FIELDS, RingField

RING_FIELDS_C: tl.constexpr = tl.constexpr(RING_FIELDS)
F_LAUNCH_TAG: tl.constexpr = tl.constexpr(int(RingField.LAUNCH_TAG))
F_FAIL_BITS: tl.constexpr = tl.constexpr(int(RingField.FAIL_BITS))
F_SLOT: tl.constexpr = tl.constexpr(int(RingField.SLOT))
F_POSITION: tl.constexpr = tl.constexpr(int(RingField.POSITION))
F_STORED_TOKEN: tl.constexpr = tl.constexpr(int(RingField.STORED_TOKEN))
F_EXPECTED_TOKEN: tl.constexpr = tl.constexpr(int(RingField.EXPECTED_TOKEN))
F_STEP: tl.constexpr = tl.constexpr(int(RingField.STEP))
F_STORED_POSITION: tl.constexpr = tl.constexpr(int(RingField.STORED_POSITION))
F_STORED_PREV_HASH: tl.constexpr = tl.constexpr(int(RingField.STORED_PREV_HASH))
F_EXPECTED_PREV_HASH: tl.constexpr = tl.constexpr(int(RingField.EXPECTED_PREV_HASH))
F_STORED_REAL_KV_HASH: tl.constexpr = tl.constexpr(int(RingField.STORED_REAL_KV_HASH))
F_EXPECTED_REAL_KV_HASH: tl.constexpr = tl.constexpr(int(RingField.EXPECTED_REAL_KV_HASH))


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
        tl.store(row + F_LAUNCH_TAG, (launch_tag + tl.zeros_like(rank)).to(tl.int64), mask=violating)
        tl.store(row + F_FAIL_BITS, bits.to(tl.int64), mask=violating)
        tl.store(row + F_SLOT, slot.to(tl.int64), mask=violating)
        tl.store(row + F_POSITION, position.to(tl.int64), mask=violating)
        tl.store(row + F_STORED_TOKEN, stored_token.to(tl.int64), mask=violating)
        tl.store(row + F_EXPECTED_TOKEN, expected_token.to(tl.int64), mask=violating)
        tl.store(row + F_STEP, (step + tl.zeros_like(rank)).to(tl.int64), mask=violating)
        tl.store(row + F_STORED_POSITION, stored_position.to(tl.int64), mask=violating)
        tl.store(row + F_STORED_PREV_HASH, stored_prev_hash.to(tl.int64, bitcast=True), mask=violating)
        tl.store(row + F_EXPECTED_PREV_HASH, expected_prev_hash.to(tl.int64, bitcast=True), mask=violating)
        tl.store(row + F_STORED_REAL_KV_HASH, stored_real_kv_hash.to(tl.int64, bitcast=True), mask=violating)
        tl.store(row + F_EXPECTED_REAL_KV_HASH, expected_real_kv_hash.to(tl.int64, bitcast=True), mask=violating)
