"""Triton write kernel and its launcher (same signature as ``write_reference.write_canaries``).

One program per request: its run of new slots is chained with an associative scan over
``x -> rotl(x, k) ^ c`` maps, block after block, carrying the last hash between blocks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kv_canary.device_state import CanaryDeviceState
from kv_canary.kernels.hash_triton import CHAIN_ANCHOR_U64, as_u64, link_hash, real_kv_hash, record_hash, rotate_left
from kv_canary.kernels.launch_cache import CompiledLaunchCache, real_kv_arguments
from kv_canary.kernels.ring_triton import append_violations
from kv_canary.launch_tags import LaunchTag
from kv_canary.plans import WritePlan
from kv_canary.real_kv import RealKvSource

_MIN_BLOCK = 16
_MAX_BLOCK = 1024


@triton.jit
def _compose(constant_a, rotation_a, constant_b, rotation_b):
    return rotate_left(constant_a, rotation_b) ^ constant_b, rotation_a + rotation_b


@triton.jit(do_not_specialize=["ring_capacity", "num_layers", "row_words", "hashed_words", "launch_tag"])
def _write_kernel(
    records_ptr,
    entry_start_ptr,
    entry_count_ptr,
    pred_slot_ptr,
    num_requests_ptr,
    slot_ptr,
    token_ptr,
    position_ptr,
    expected_token_ptr,
    expected_position_ptr,
    ring_rows_ptr,
    ring_index_ptr,
    step_ptr,
    layer_pointers_ptr,
    ring_capacity,
    num_layers,
    row_words,
    hashed_words,
    launch_tag,
    ASSERT_INPUTS: tl.constexpr,
    HASH_REAL_KV: tl.constexpr,
    LAYER_BLOCK: tl.constexpr,
    WORD_CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    request = tl.program_id(0)
    if request < tl.load(num_requests_ptr):
        start = tl.load(entry_start_ptr + request).to(tl.int64)
        count = tl.load(entry_count_ptr + request)
        pred_slot = tl.load(pred_slot_ptr + request)
        pred = records_ptr + tl.maximum(pred_slot, 0).to(tl.int64) * 4
        pred_position = tl.load(pred + 1)
        pred_hash = record_hash(tl.load(pred + 0), pred_position, as_u64(tl.load(pred + 2)))
        first_prev_hash = tl.where(pred_slot == 0, CHAIN_ANCHOR_U64, tl.where(pred_slot > 0, pred_hash, 0))
        carry = first_prev_hash ^ first_prev_hash
        step = tl.load(step_ptr)
        lane = tl.arange(0, BLOCK)
        for first in range(0, count, BLOCK):
            offset = first + lane
            in_run = offset < count
            entry = start + offset
            token = tl.load(token_ptr + entry, mask=in_run, other=0)
            position = tl.load(position_ptr + entry, mask=in_run, other=0)
            has_prev = in_run & (offset > 0)
            prev_link = link_hash(
                tl.load(token_ptr + entry - 1, mask=has_prev, other=0),
                tl.load(position_ptr + entry - 1, mask=has_prev, other=0),
            )
            constant = tl.where(offset == 0, first_prev_hash, prev_link)
            constant = tl.where(in_run, constant, 0)
            rotation = tl.where(has_prev, 1, 0)
            scanned_constant, scanned_rotation = tl.associative_scan((constant, rotation), 0, _compose)
            prev_hash = rotate_left(carry + tl.zeros_like(scanned_constant), scanned_rotation) ^ scanned_constant
            carry = tl.sum(tl.where(lane == BLOCK - 1, prev_hash, 0), axis=0)

            expected_token = tl.load(expected_token_ptr + entry, mask=in_run, other=-1)
            expected_position = tl.load(expected_position_ptr + entry, mask=in_run, other=0)
            bits = tl.zeros_like(token)
            if ASSERT_INPUTS:
                bits |= tl.where((expected_token >= 0) & (token != expected_token), 16, 0)
                breaks_chain = (offset == 0) & (pred_slot > 0) & (pred_position + 1 != position)
                bits |= tl.where((position != expected_position) | breaks_chain, 32, 0)
            bits = tl.where(in_run, bits, 0)

            slot = tl.load(slot_ptr + entry, mask=in_run, other=0)
            stores = in_run & (slot != 0)
            stored_real_kv = tl.zeros_like(prev_hash)
            if HASH_REAL_KV:
                stored_real_kv = real_kv_hash(
                    layer_pointers_ptr, num_layers, row_words, hashed_words, slot, stores, LAYER_BLOCK, WORD_CHUNK
                )
            record = records_ptr + slot.to(tl.int64) * 4
            tl.store(record + 0, token.to(tl.int64), mask=stores)
            tl.store(record + 1, position.to(tl.int64), mask=stores)
            tl.store(record + 2, prev_hash.to(tl.int64, bitcast=True), mask=stores)
            tl.store(record + 3, stored_real_kv.to(tl.int64, bitcast=True), mask=stores)
            append_violations(
                ring_rows_ptr,
                ring_index_ptr,
                ring_capacity,
                bits != 0,
                launch_tag,
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


_LAUNCHES = CompiledLaunchCache(_write_kernel)


def write_canaries(
    *,
    records: torch.Tensor,
    plan: WritePlan,
    launch_tag: LaunchTag,
    state: CanaryDeviceState,
    real_kv: RealKvSource | None,
    assert_inputs: bool,
    num_entries: int | None = None,
    max_entries_per_request: int | None = None,
) -> None:
    del num_entries  # each program reads its own run's bounds from the plan
    longest = plan.capacity if max_entries_per_request is None else max_entries_per_request
    block = min(_MAX_BLOCK, max(_MIN_BLOCK, triton.next_power_of_2(max(longest, 1))))
    layer_pointers, real_kv_shape, real_kv_tile = real_kv_arguments(real_kv, state.step)
    _LAUNCHES.launch(
        (plan.request_capacity,),
        (
            records,
            plan.entry_starts,
            plan.entry_counts,
            plan.pred_slots,
            plan.num_requests,
            plan.slot_indices,
            plan.tokens,
            plan.positions,
            plan.expected_tokens,
            plan.expected_positions,
            state.ring.rows,
            state.ring.write_index,
            state.step,
            layer_pointers,
        ),
        (state.ring.capacity, *real_kv_shape, int(launch_tag)),
        num_warps=max(1, min(4, block // 32)),
        ASSERT_INPUTS=assert_inputs,
        HASH_REAL_KV=real_kv is not None,
        BLOCK=block,
        **real_kv_tile,
    )
