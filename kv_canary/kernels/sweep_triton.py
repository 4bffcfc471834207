"""The sweep's Triton kernel: cached slots of the radix cache, every group, K/V half and phase in one launch.

Its input is a list of **segments** (``plans.SweepSegment``, listed by ``sweep/radix_cursor.py``):
runs of cached tokens at consecutive positions, each chained from a predecessor slot (a radix node:
its slots, its token ids, the depth of its first token and the address of its parent's last slot),
read in place from the tensors the radix cache already holds. Program ``(segment, split)`` verifies
blocks ``split``, ``split + splits``, ... of its segment: per pool group (SWA groups through
``full_to_swa_index_mapping``, skipping tombstoned segments), per K/V half, the HEAD records
and then the TAIL records with the real-K/V hash, under the half's ``SWEEP_*`` tag. A cache
that walks itself into flat per-token tensors (``EXPLICIT``) is one segment whose positions
and predecessors are given per token.

The torch reference (``sweep_reference``) checks the same entries with the same results.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kv_canary.kernels.layout_triton import (
    HALF_TAG_STEP_C,
    PREV_SEQUENCE_START_C,
    PREV_UNKNOWN_C,
    TOKEN_UNKNOWN_C,
)
from kv_canary.kernels.record_ops_triton import check_real_kv, check_records
from kv_canary.kernels.ring_triton import append_violations
from kv_canary.plans import SegmentField

SEGMENT_FIELDS_C: tl.constexpr = tl.constexpr(len(SegmentField))
SEG_SLOTS: tl.constexpr = tl.constexpr(int(SegmentField.SLOTS))
SEG_SLOT_STRIDE: tl.constexpr = tl.constexpr(int(SegmentField.SLOT_STRIDE))
SEG_TOKENS: tl.constexpr = tl.constexpr(int(SegmentField.TOKENS))
SEG_LENGTH: tl.constexpr = tl.constexpr(int(SegmentField.LENGTH))
SEG_FIRST_POSITION: tl.constexpr = tl.constexpr(int(SegmentField.FIRST_POSITION))
SEG_PRED: tl.constexpr = tl.constexpr(int(SegmentField.PRED))
SEG_PRED_STRIDE: tl.constexpr = tl.constexpr(int(SegmentField.PRED_STRIDE))
SEG_SWA_RESIDENT: tl.constexpr = tl.constexpr(int(SegmentField.SWA_RESIDENT))


@triton.jit
def _slot_values(address, index, stride, mask):
    """Slot values of an int32 (stride 1) or int64 (stride 2, low word) tensor at ``address``."""
    base = address.to(tl.pointer_type(tl.int32))
    return tl.load(base + index.to(tl.int64) * stride, mask=mask, other=0).to(tl.int64)


@triton.jit
def _sweep_group(
    group: tl.constexpr,
    swa: tl.constexpr,
    full_slot,
    pred_full,
    left_full,
    position,
    expected_token,
    active,
    lane,
    swa_resident,
    full_to_swa_ptr,
    records_head_k,
    records_head_v,
    records_tail_k,
    records_tail_v,
    real_kv_table_ptr,
    ring_rows_ptr,
    ring_index_ptr,
    slot_runs_ptr,
    ring_capacity,
    step,
    tag_k,
    NUM_HALVES: tl.constexpr,
    CHECK_TOKENS: tl.constexpr,
    RECORD_VIOLATIONS: tl.constexpr,
    HASH_REAL_KV: tl.constexpr,
    LAYER_BLOCK: tl.constexpr,
    WORD_CHUNK: tl.constexpr,
):
    slot = full_slot
    pred = pred_full
    left = left_full
    if swa:
        # An SWA group skips tombstoned segments and slots no longer resident (mapped to 0), and
        # checks a chain only where the predecessor is still resident.
        active = active & ((tl.zeros_like(full_slot) + swa_resident) != 0)
        slot = tl.load(full_to_swa_ptr + full_slot, mask=active, other=0).to(tl.int64)
        active = active & (slot != 0)
        resident_pred = tl.load(full_to_swa_ptr + pred_full, mask=active & (pred_full > 0), other=0).to(tl.int64)
        pred = tl.where(resident_pred == 0, PREV_UNKNOWN_C, resident_pred)
        pred = tl.where(pred_full == PREV_SEQUENCE_START_C, PREV_SEQUENCE_START_C, pred)
        left = tl.load(full_to_swa_ptr + left_full, mask=active & (lane > 0), other=0).to(tl.int64)
    left_active = tl.gather(active.to(tl.int32), tl.maximum(lane - 1, 0), 0) != 0
    from_left = active & (lane > 0) & left_active & (pred > 0) & (left == pred)
    for half in tl.static_range(NUM_HALVES):
        tag = tag_k + half * HALF_TAG_STEP_C
        for tail in tl.static_range(2):
            if half == 0:
                records = records_tail_k if tail == 1 else records_head_k
            else:
                records = records_tail_v if tail == 1 else records_head_v
            bits, token, stored_position, prev_hash, expected_prev_hash, stored_real_kv = check_records(
                records, slot, pred, position, expected_token, active, from_left, lane, CHECK_TOKENS
            )
            expected_real_kv = tl.zeros_like(stored_real_kv)
            if tail == 1 and HASH_REAL_KV:
                bits, expected_real_kv = check_real_kv(
                    bits,
                    real_kv_table_ptr,
                    group * NUM_HALVES + half,
                    slot,
                    active,
                    stored_real_kv,
                    LAYER_BLOCK,
                    WORD_CHUNK,
                )
            bits = tl.where(active, bits, 0)
            tl.atomic_add(slot_runs_ptr + tag, tl.sum(active.to(tl.int64), axis=0))
            if RECORD_VIOLATIONS:
                append_violations(
                    ring_rows_ptr,
                    ring_index_ptr,
                    ring_capacity,
                    bits != 0,
                    tag,
                    bits,
                    slot,
                    position,
                    token,
                    expected_token,
                    step,
                    stored_position,
                    prev_hash,
                    expected_prev_hash,
                    stored_real_kv,
                    expected_real_kv,
                )


@triton.jit(do_not_specialize=["ring_capacity", "splits", "num_entries"])
def _sweep_kernel(
    segments_ptr,
    positions_ptr,  # EXPLICIT only: int64 position per token
    pred_slots_ptr,  # EXPLICIT only: int64 predecessor per token
    full_to_swa_ptr,
    records_0hk,
    records_0hv,
    records_0tk,
    records_0tv,
    records_1hk,
    records_1hv,
    records_1tk,
    records_1tv,
    real_kv_table_ptr,
    ring_rows_ptr,
    ring_index_ptr,
    kernel_runs_ptr,
    slot_runs_ptr,
    step_ptr,
    ring_capacity,
    splits,
    num_entries,  # EXPLICIT only
    EXPLICIT: tl.constexpr,
    VERIFY_GROUP_0: tl.constexpr,
    VERIFY_GROUP_1: tl.constexpr,
    GROUP_0_SWA: tl.constexpr,
    NUM_HALVES: tl.constexpr,
    TAG_0: tl.constexpr,
    TAG_1: tl.constexpr,
    CHECK_TOKENS: tl.constexpr,
    RECORD_VIOLATIONS: tl.constexpr,
    HASH_REAL_KV: tl.constexpr,
    LAYER_BLOCK: tl.constexpr,
    WORD_CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    if pid == 0:  # each tag's kernel runs twice a launch: its HEAD and its TAIL records
        for half in tl.static_range(NUM_HALVES):
            if VERIFY_GROUP_0:
                tl.atomic_add(kernel_runs_ptr + TAG_0 + half * HALF_TAG_STEP_C, 2)
            if VERIFY_GROUP_1:
                tl.atomic_add(kernel_runs_ptr + TAG_1 + half * HALF_TAG_STEP_C, 2)
    segment = pid // splits
    split = pid % splits
    row = segments_ptr + segment * SEGMENT_FIELDS_C
    slots = tl.load(row + SEG_SLOTS)
    slot_stride = tl.load(row + SEG_SLOT_STRIDE)
    tokens = tl.load(row + SEG_TOKENS)
    length = tl.load(row + SEG_LENGTH)
    first_position = tl.load(row + SEG_FIRST_POSITION)
    pred_address = tl.load(row + SEG_PRED)
    pred_stride = tl.load(row + SEG_PRED_STRIDE)
    swa_resident = tl.load(row + SEG_SWA_RESIDENT)
    if EXPLICIT:
        length = num_entries
    step = tl.load(step_ptr)
    lane = tl.arange(0, BLOCK)
    for block in range(split, tl.cdiv(length, BLOCK), splits):
        offset = block * BLOCK + lane
        active = offset < length
        full_slot = _slot_values(slots, offset, slot_stride, active)
        left_full = _slot_values(slots, offset - 1, slot_stride, active & (offset > 0))
        if EXPLICIT:
            position = tl.load(positions_ptr + offset, mask=active, other=0)
            pred_full = tl.load(pred_slots_ptr + offset, mask=active, other=PREV_SEQUENCE_START_C)
        else:
            position = first_position + offset
            # The segment's first token chains from the parent's last slot (none: a sequence start).
            has_pred = (tl.zeros_like(offset) + pred_address) != 0
            segment_pred = tl.where(
                has_pred,
                _slot_values(pred_address, tl.zeros_like(offset), pred_stride, active & (offset == 0) & has_pred),
                PREV_SEQUENCE_START_C,
            )
            pred_full = tl.where(offset == 0, segment_pred, left_full)
        expected_token = tl.full([BLOCK], TOKEN_UNKNOWN_C, tl.int32)
        if CHECK_TOKENS:
            has_tokens = active & ((tl.zeros_like(offset) + tokens) != 0)
            expected_token = tl.load(
                tokens.to(tl.pointer_type(tl.int32)) + offset, mask=has_tokens, other=TOKEN_UNKNOWN_C
            )
        if VERIFY_GROUP_0:
            _sweep_group(
                0,
                GROUP_0_SWA,
                full_slot,
                pred_full,
                left_full,
                position,
                expected_token,
                active,
                lane,
                swa_resident,
                full_to_swa_ptr,
                records_0hk,
                records_0hv,
                records_0tk,
                records_0tv,
                real_kv_table_ptr,
                ring_rows_ptr,
                ring_index_ptr,
                slot_runs_ptr,
                ring_capacity,
                step,
                TAG_0,
                NUM_HALVES,
                CHECK_TOKENS,
                RECORD_VIOLATIONS,
                HASH_REAL_KV,
                LAYER_BLOCK,
                WORD_CHUNK,
            )
        if VERIFY_GROUP_1:
            _sweep_group(
                1,
                True,
                full_slot,
                pred_full,
                left_full,
                position,
                expected_token,
                active,
                lane,
                swa_resident,
                full_to_swa_ptr,
                records_1hk,
                records_1hv,
                records_1tk,
                records_1tv,
                real_kv_table_ptr,
                ring_rows_ptr,
                ring_index_ptr,
                slot_runs_ptr,
                ring_capacity,
                step,
                TAG_1,
                NUM_HALVES,
                CHECK_TOKENS,
                RECORD_VIOLATIONS,
                HASH_REAL_KV,
                LAYER_BLOCK,
                WORD_CHUNK,
            )
