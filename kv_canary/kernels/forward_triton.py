"""The per-forward Triton kernel: plans folded in, every pool group and K/V half in one launch.

A forward runs three launches of ``_forward_kernel``: the HEAD write (before the model), the
HEAD verify, and the TAIL (after the model: verify and write together). Nothing is planned in
memory first: each program reads the forward's own tensors (``req_to_token`` rows, the lengths,
``out_cache_loc``...) and derives the entries it checks or writes, so a captured graph needs no
plan capacity and a long prefix is never cut.

* A **verify program** ``(request, split)`` walks the positions the request's attention reads,
  block ``split``, ``split + splits``, ...: the whole prefix for a FULL group, its last
  ``window`` positions for an SWA group (translated through ``full_to_swa_index_mapping``).
  Positions in a block are consecutive, so each lane's chain predecessor is its left lane and
  only a block's first lane reads a predecessor record.
* A **write program** (one per request) writes the request's run of new slots, chained from
  the slot of its last cached position, block after block (``record_ops_triton.scan_chain``).

The groups and halves are unrolled at compile time: group 0 is the FULL group unless the
install guards an SWA group only, group 1 (when present) the SWA group (``group_layout``).

HEAD writes before it verifies (two launches, ordered by the stream): a slot this forward both
reads and hands to a new token then fails the HEAD verify of this very forward. The TAIL
launch verifies and writes at once; a correct engine never plans one slot both ways, and one
that does was already reported by the HEAD verify.

The HEAD write launch opens the forward: its programs stamp violations with ``step + 1``, and
the last of them to finish advances the device step counter, so the later launches stamp the
new step without a launch of their own. The torch reference (``forward_reference``) computes
the same records, ring rows and counters.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kv_canary.kernels.hash_triton import CHAIN_ANCHOR_U64, link_hash, real_kv_hash, record_hash, rotate_left
from kv_canary.kernels.layout_triton import (
    FAIL_WRITE_POSITION,
    FAIL_WRITE_TOKEN,
    HALF_TAG_STEP_C,
    PADDING_ROW_C,
    PREV_SEQUENCE_START_C,
    PREV_UNKNOWN_C,
    TOKEN_UNKNOWN_C,
    VERIFY_ENTRIES_FULL,
    VERIFY_ENTRIES_SWA,
)
from kv_canary.kernels.record_ops_triton import (
    check_lost_writes,
    check_real_kv,
    check_records,
    load_records,
    poison_rows,
    real_kv_source,
    scan_chain,
    store_records,
)
from kv_canary.kernels.ring_triton import append_violations


@triton.jit
def _records_of(group: tl.constexpr, half: tl.constexpr, records_0k, records_0v, records_1k, records_1v):
    if group == 0:
        if half == 0:
            return records_0k
        else:
            return records_0v
    elif half == 0:
        return records_1k
    else:
        return records_1v


@triton.jit
def _tag_of(group: tl.constexpr, half: tl.constexpr, TAG_0: tl.constexpr, TAG_1: tl.constexpr):
    if group == 0:
        return TAG_0 + half * HALF_TAG_STEP_C
    else:
        return TAG_1 + half * HALF_TAG_STEP_C


@triton.jit(
    do_not_specialize=[
        "batch_size",
        "num_new_tokens",
        "ring_capacity",
        "window",
        "req_to_token_stride",
        "req_to_token_width",
        "token_ids_stride",
        "token_ids_width",
        "verify_programs",
        "splits",
        "decode",
    ]
)
def _forward_kernel(
    req_pool_index_ptr,
    prefix_len_ptr,  # seq_lens in a decode batch
    extend_len_ptr,
    out_cache_loc_ptr,
    input_id_ptr,
    position_ptr,
    req_to_token_ptr,
    token_ids_ptr,
    full_to_swa_ptr,
    records_0k,
    records_0v,
    records_1k,
    records_1v,
    real_kv_table_ptr,
    ring_rows_ptr,
    ring_index_ptr,
    kernel_runs_ptr,
    slot_runs_ptr,
    step_ptr,
    verify_entries_ptr,
    plan_overflow_ptr,
    departures_ptr,
    batch_size,
    num_new_tokens,
    ring_capacity,
    window,
    req_to_token_stride,
    req_to_token_width,
    token_ids_stride,
    token_ids_width,
    verify_programs,
    splits,
    decode,  # 1: a decode batch given by seq_lens (prefix_len_ptr), one new token each; extend_len_ptr unread
    VERIFY: tl.constexpr,
    WRITE: tl.constexpr,
    TAIL: tl.constexpr,
    OPENS_FORWARD: tl.constexpr,
    NUM_GROUPS: tl.constexpr,
    FIRST_GROUP_SWA: tl.constexpr,
    NUM_HALVES: tl.constexpr,
    TAG_0: tl.constexpr,
    TAG_1: tl.constexpr,
    HAS_TOKEN_IDS: tl.constexpr,
    CHECK_TOKENS: tl.constexpr,
    RECORD_VIOLATIONS: tl.constexpr,
    ASSERT_INPUTS: tl.constexpr,
    HASH_REAL_KV: tl.constexpr,
    LOST_WRITES: tl.constexpr,
    LAYER_BLOCK: tl.constexpr,
    WORD_CHUNK: tl.constexpr,
    REQUEST_BLOCK: tl.constexpr,
    VERIFY_BLOCK: tl.constexpr,
    WRITE_BLOCK: tl.constexpr,
    WRITE_BLOCK_LOG2: tl.constexpr,
):
    pid = tl.program_id(0)
    step = tl.load(step_ptr)
    if OPENS_FORWARD:
        step += 1

    if VERIFY:
        if pid == 0:
            for group in tl.static_range(NUM_GROUPS):
                for half in tl.static_range(NUM_HALVES):
                    tl.atomic_add(kernel_runs_ptr + _tag_of(group, half, TAG_0, TAG_1), 1)
            if not TAIL:  # verify entries per group and forward, for the SWA divergence line
                prefix_total = tl.zeros([REQUEST_BLOCK], tl.int64)
                window_total = tl.zeros([REQUEST_BLOCK], tl.int64)
                for first_request in range(0, batch_size, REQUEST_BLOCK):
                    index = first_request + tl.arange(0, REQUEST_BLOCK)
                    in_batch = index < batch_size
                    prefix = tl.load(prefix_len_ptr + index, mask=in_batch, other=0).to(tl.int64)
                    prefix = tl.where(in_batch, prefix - decode, 0)  # a decode batch gives seq_lens
                    prefix_total += prefix
                    window_total += tl.minimum(prefix, window)
                for group in tl.static_range(NUM_GROUPS):
                    if FIRST_GROUP_SWA or group == 1:
                        tl.atomic_add(verify_entries_ptr + VERIFY_ENTRIES_SWA, tl.sum(window_total, axis=0))
                    else:
                        tl.atomic_add(verify_entries_ptr + VERIFY_ENTRIES_FULL, tl.sum(prefix_total, axis=0))
        request = pid // splits
        if (pid < verify_programs) & (request < batch_size):
            split = pid % splits
            row = tl.load(req_pool_index_ptr + request).to(tl.int64)
            prefix = tl.load(prefix_len_ptr + request).to(tl.int64) - decode
            swa_first = tl.maximum(prefix - window, 0)
            first = swa_first
            if not FIRST_GROUP_SWA:
                first = tl.zeros_like(swa_first)  # a FULL group reads the whole prefix
            last = tl.minimum(prefix, req_to_token_width)  # positions past the row are counted, never read
            if (split == 0) & (prefix > tl.maximum(last, first)):
                tl.atomic_add(plan_overflow_ptr, prefix - tl.maximum(last, first))
            row_slots = req_to_token_ptr + row * req_to_token_stride
            row_tokens = token_ids_ptr + row * token_ids_stride
            lane = tl.arange(0, VERIFY_BLOCK)
            # Requests padded onto the padding row (graph batches) read nothing real: their entries are
            # padding, so no block runs and none is counted.
            blocks = tl.where(row == PADDING_ROW_C, 0, tl.cdiv(tl.maximum(last - first, 0), VERIFY_BLOCK))
            for block in range(split, blocks, splits):
                position = first + block * VERIFY_BLOCK + lane
                in_range = position < last
                full_slot = tl.load(row_slots + position, mask=in_range, other=0).to(tl.int64)
                pred_full = tl.load(row_slots + position - 1, mask=in_range & (position > 0), other=0).to(tl.int64)
                expected_token = tl.full([VERIFY_BLOCK], TOKEN_UNKNOWN_C, tl.int32)
                if CHECK_TOKENS and HAS_TOKEN_IDS:
                    expected_token = tl.load(
                        row_tokens + tl.minimum(position, token_ids_width - 1), mask=in_range, other=TOKEN_UNKNOWN_C
                    ).to(tl.int32)
                for group in tl.static_range(NUM_GROUPS):
                    if FIRST_GROUP_SWA or group == 1:
                        group_first = swa_first  # the window, translated into the SWA pool (0: not resident)
                        active = in_range & (position >= swa_first)
                        slot = tl.load(full_to_swa_ptr + full_slot, mask=active, other=0).to(tl.int64)
                        pred = tl.load(full_to_swa_ptr + pred_full, mask=active & (position > 0), other=0)
                        pred = tl.where(pred == 0, PREV_UNKNOWN_C, pred.to(tl.int64))  # slid out of the window
                    else:
                        group_first = first
                        active = in_range
                        slot = full_slot
                        pred = pred_full
                    pred = tl.where(position == 0, PREV_SEQUENCE_START_C, pred)
                    # The left lane's slot is this lane's predecessor: it was read at position - 1.
                    from_left = active & (lane > 0) & (position - 1 >= group_first) & (pred > 0)
                    for half in tl.static_range(NUM_HALVES):
                        tag = _tag_of(group, half, TAG_0, TAG_1)
                        records = _records_of(group, half, records_0k, records_0v, records_1k, records_1v)
                        bits, token, stored_position, prev_hash, expected_prev_hash, stored_real_kv = check_records(
                            records, slot, pred, position, expected_token, active, from_left, lane, CHECK_TOKENS
                        )
                        expected_real_kv = tl.zeros_like(stored_real_kv)
                        if TAIL and HASH_REAL_KV:
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

    if WRITE:
        request = pid - verify_programs
        if (request >= 0) & (request < batch_size):
            # The request's run starts after the new tokens of the requests before it (one each in decode).
            before = tl.zeros([REQUEST_BLOCK], tl.int64)
            for first_request in range(0, batch_size * (1 - decode), REQUEST_BLOCK):
                index = first_request + tl.arange(0, REQUEST_BLOCK)
                before += tl.load(extend_len_ptr + index, mask=index < request, other=0).to(tl.int64)
            start = tl.sum(before, axis=0) + request * decode
            row = tl.load(req_pool_index_ptr + request).to(tl.int64)
            prefix = tl.load(prefix_len_ptr + request).to(tl.int64) - decode
            extend = tl.load(extend_len_ptr + request, mask=decode == 0, other=1).to(tl.int64)
            count = tl.maximum(tl.minimum(extend, num_new_tokens - start), 0)  # past out_cache_loc: counted
            if extend > count:
                tl.atomic_add(plan_overflow_ptr, extend - count)
            row_slots = req_to_token_ptr + row * req_to_token_stride
            row_tokens = token_ids_ptr + row * token_ids_stride
            has_pred = (prefix > 0) & (prefix - 1 < req_to_token_width)
            pred_full = tl.load(row_slots + tl.maximum(prefix - 1, 0), mask=has_pred, other=0).to(tl.int64)
            lane = tl.arange(0, WRITE_BLOCK)
            for group in tl.static_range(NUM_GROUPS):
                if FIRST_GROUP_SWA or group == 1:
                    pred = tl.load(full_to_swa_ptr + pred_full, mask=has_pred, other=0).to(tl.int64)
                    pred = tl.where(pred == 0, PREV_UNKNOWN_C, pred)  # slid out of the window
                else:
                    pred = pred_full
                pred = tl.where(prefix == 0, PREV_SEQUENCE_START_C, pred)
                for half in tl.static_range(NUM_HALVES):
                    tag = _tag_of(group, half, TAG_0, TAG_1)
                    records = _records_of(group, half, records_0k, records_0v, records_1k, records_1v)
                    # The predecessor's record is read once, before this run writes any record.
                    pred_token, pred_position, pred_prev_hash, _ = load_records(
                        records, tl.zeros([1], tl.int64) + tl.maximum(pred, 0), tl.full([1], True, tl.int1)
                    )
                    pred_hash = tl.sum(record_hash(pred_token, pred_position, pred_prev_hash), axis=0)
                    pred_position = tl.sum(pred_position, axis=0)
                    first_prev_hash = tl.where(
                        pred == PREV_SEQUENCE_START_C, CHAIN_ANCHOR_U64, tl.where(pred > 0, pred_hash, 0)
                    )
                    carry = first_prev_hash ^ first_prev_hash
                    for first_offset in range(0, count, WRITE_BLOCK):
                        offset = first_offset + lane
                        in_run = offset < count
                        entry = start + offset
                        token = tl.load(input_id_ptr + entry, mask=in_run, other=0).to(tl.int32).to(tl.int64)
                        position = tl.load(position_ptr + entry, mask=in_run, other=0).to(tl.int32).to(tl.int64)
                        has_prev = in_run & (offset > 0)
                        prev_link = link_hash(
                            tl.load(input_id_ptr + entry - 1, mask=has_prev, other=0).to(tl.int32).to(tl.int64),
                            tl.load(position_ptr + entry - 1, mask=has_prev, other=0).to(tl.int32).to(tl.int64),
                        )
                        chain, carry = scan_chain(prev_link, has_prev, carry, WRITE_BLOCK_LOG2)
                        prev_hash = rotate_left(first_prev_hash + tl.zeros_like(chain), offset) ^ chain
                        expected_position = prefix + offset
                        expected_token = tl.full([WRITE_BLOCK], TOKEN_UNKNOWN_C, tl.int32)
                        if HAS_TOKEN_IDS:
                            expected_token = tl.load(
                                row_tokens + tl.minimum(expected_position, token_ids_width - 1),
                                mask=in_run,
                                other=TOKEN_UNKNOWN_C,
                            ).to(tl.int32)
                        bits = tl.zeros_like(token)
                        if ASSERT_INPUTS:
                            bits |= tl.where((expected_token >= 0) & (token != expected_token), FAIL_WRITE_TOKEN, 0)
                            breaks_chain = (offset == 0) & (pred > 0) & (pred_position + 1 != position)
                            bits |= tl.where((position != expected_position) | breaks_chain, FAIL_WRITE_POSITION, 0)
                        slot = tl.load(out_cache_loc_ptr + entry, mask=in_run, other=0).to(tl.int64)
                        if FIRST_GROUP_SWA or group == 1:
                            slot = tl.load(full_to_swa_ptr + slot, mask=in_run, other=0).to(tl.int64)
                        stores = in_run & (slot != 0)
                        stored_real_kv = tl.zeros_like(prev_hash)
                        if HASH_REAL_KV:
                            if TAIL:
                                if LOST_WRITES:
                                    bits = check_lost_writes(
                                        bits, real_kv_table_ptr, group * NUM_HALVES + half, slot, stores, LAYER_BLOCK
                                    )
                                layers, num_layers, row_words, hashed_words = real_kv_source(
                                    real_kv_table_ptr, group * NUM_HALVES + half
                                )
                                stored_real_kv = real_kv_hash(
                                    layers, num_layers, row_words, hashed_words, slot, in_run, LAYER_BLOCK, WORD_CHUNK
                                )
                            elif LOST_WRITES:
                                poison_rows(real_kv_table_ptr, group * NUM_HALVES + half, slot, stores, LAYER_BLOCK)
                        bits = tl.where(in_run, bits, 0)
                        store_records(records, slot, stores, token, position, prev_hash, stored_real_kv)
                        if ASSERT_INPUTS or (TAIL and LOST_WRITES):
                            append_violations(
                                ring_rows_ptr,
                                ring_index_ptr,
                                ring_capacity,
                                bits != 0,
                                tag,
                                bits,
                                slot,
                                expected_position,
                                token,
                                expected_token,
                                step,
                                position,
                                prev_hash,
                                tl.zeros_like(prev_hash),
                                stored_real_kv,
                                tl.zeros_like(prev_hash),
                            )

    if OPENS_FORWARD:
        # The last program to finish advances the step: every program read it before departing.
        departed = tl.atomic_add(departures_ptr, 1)
        if departed == tl.num_programs(0) - 1:
            tl.store(departures_ptr, 0)
            tl.store(step_ptr, step)
