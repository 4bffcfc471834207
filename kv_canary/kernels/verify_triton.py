"""Triton verify kernel and its launcher (same signature as ``verify_reference.verify_canaries``)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kv_canary.device_state import CanaryDeviceState
from kv_canary.kernels.hash_triton import CHAIN_ANCHOR_U64, as_u64, real_kv_hash, record_hash
from kv_canary.kernels.launch_cache import CompiledLaunchCache, real_kv_arguments
from kv_canary.kernels.ring_triton import append_violations
from kv_canary.launch_tags import LaunchTag
from kv_canary.plans import PADDING_POSITION, VerifyPlan
from kv_canary.real_kv import RealKvSource

PADDING_POSITION_C: tl.constexpr = tl.constexpr(PADDING_POSITION)

# (entries up to, block, warps): one-warp blocks for small launches, whose reductions then need
# no barrier; larger blocks once there is enough work to hide memory latency, and larger still
# for sweep-sized launches (8 warps: 13% faster passes over 1M cached slots). Tuned on an H100.
_LAUNCH_SHAPES = ((4096, 32, 1), (1 << 19, 128, 4), (1 << 62, 256, 8))
_BLOCK_WITH_REAL_KV = 64


@triton.jit
def _record_words(records_ptr, slot, mask):
    """Load whole 32-byte records as one [BLOCK, 4] tile and split it into its four words."""
    words = tl.load(
        records_ptr + slot.to(tl.int64)[:, None] * 4 + tl.arange(0, 4)[None, :], mask=mask[:, None], other=0
    )
    even, odd = tl.split(tl.reshape(words, (words.shape[0], 2, 2)))
    token, prev_hash = tl.split(even)
    position, real_kv = tl.split(odd)
    return token, position, as_u64(prev_hash), as_u64(real_kv)


@triton.jit(do_not_specialize=["ring_capacity", "num_layers", "row_words", "hashed_words", "launch_tag", "num_entries"])
def _verify_kernel(
    records_ptr,
    slot_ptr,
    prev_slot_ptr,
    expected_position_ptr,
    expected_token_ptr,
    num_valid_ptr,
    ring_rows_ptr,
    ring_index_ptr,
    kernel_runs_ptr,
    slot_runs_ptr,
    step_ptr,
    layer_pointers_ptr,
    ring_capacity,
    num_layers,
    row_words,
    hashed_words,
    launch_tag,
    num_entries,
    CHECK_TOKENS: tl.constexpr,
    CHECK_REAL_KV: tl.constexpr,
    RECORD_VIOLATIONS: tl.constexpr,
    HOST_COUNTED: tl.constexpr,
    LAYER_BLOCK: tl.constexpr,
    WORD_CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    if pid == 0:
        tl.atomic_add(kernel_runs_ptr + launch_tag, 1)
    # Launched over a whole plan (graph replays), blocks past num_valid leave before reading it;
    # launched over a host-known count, no block waits for num_valid before its plan loads.
    if HOST_COUNTED or pid * BLOCK < tl.load(num_valid_ptr):
        lane = tl.arange(0, BLOCK)
        entry = pid * BLOCK + lane
        in_launch = entry < num_entries
        # The plan loads do not wait for num_valid: one round trip to memory less on small launches.
        num_valid = tl.load(num_valid_ptr)
        slot = tl.load(slot_ptr + entry, mask=in_launch, other=0)
        left_slot = tl.load(slot_ptr + entry - 1, mask=in_launch & (lane > 0), other=0)
        prev_slot = tl.load(prev_slot_ptr + entry, mask=in_launch, other=-1)
        expected_position = tl.load(expected_position_ptr + entry, mask=in_launch, other=0)
        active = in_launch & (entry < num_valid) & (expected_position != PADDING_POSITION_C)

        token, position, prev_hash, stored_real_kv = _record_words(records_ptr, slot, active)
        own_hash = record_hash(token, position, prev_hash)
        # A slot's predecessor is usually the previous entry's own slot: take its hash from that lane
        # and read the predecessor's record from memory only when it lives elsewhere.
        left = tl.maximum(lane - 1, 0)
        left_active = tl.gather(active.to(tl.int32), left, 0) != 0  # a padding lane loaded no record
        from_left = (lane > 0) & (prev_slot > 0) & (left_slot == prev_slot) & left_active
        load_pred = active & (prev_slot > 0) & ~from_left
        pred_token, pred_position, pred_prev_hash, _ = _record_words(records_ptr, tl.maximum(prev_slot, 0), load_pred)
        pred_hash = tl.where(
            from_left, tl.gather(own_hash, left, 0), record_hash(pred_token, pred_position, pred_prev_hash)
        )
        expected_prev_hash = tl.where(prev_slot == 0, tl.zeros_like(pred_hash) + CHAIN_ANCHOR_U64, pred_hash)

        bits = tl.where(position != expected_position, 2, 0)
        bits |= tl.where((prev_slot >= 0) & (prev_hash != expected_prev_hash), 1, 0)
        expected_token = tl.full([BLOCK], -1, tl.int32)
        if CHECK_TOKENS:
            expected_token = tl.load(expected_token_ptr + entry, mask=active, other=-1)
            bits |= tl.where((expected_token >= 0) & (token != expected_token), 4, 0)
        expected_real_kv = tl.zeros_like(stored_real_kv)
        if CHECK_REAL_KV:
            expected_real_kv = real_kv_hash(
                layer_pointers_ptr, num_layers, row_words, hashed_words, slot, active, LAYER_BLOCK, WORD_CHUNK
            )
            bits |= tl.where(stored_real_kv != expected_real_kv, 8, 0)
        bits = tl.where(active, bits, 0)

        tl.atomic_add(slot_runs_ptr + launch_tag, tl.sum(active.to(tl.int64), axis=0))
        if RECORD_VIOLATIONS:
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
                tl.load(step_ptr),
                position,
                prev_hash,
                expected_prev_hash,
                stored_real_kv,
                expected_real_kv,
            )


_LAUNCHES = CompiledLaunchCache(_verify_kernel)


def verify_canaries(
    *,
    records: torch.Tensor,
    plan: VerifyPlan,
    launch_tag: LaunchTag,
    state: CanaryDeviceState,
    real_kv: RealKvSource | None,
    check_tokens: bool,
    record_violations: bool = True,
    num_entries: int | None = None,
) -> None:
    n = plan.capacity if num_entries is None else min(num_entries, plan.capacity)
    block, warps = next((block, warps) for limit, block, warps in _LAUNCH_SHAPES if n <= limit)
    if real_kv is not None:
        block, warps = min(block, _BLOCK_WITH_REAL_KV), min(warps, 2)
    layer_pointers, real_kv_shape, real_kv_tile = real_kv_arguments(real_kv, state.step)
    _LAUNCHES.launch(
        (max(1, triton.cdiv(n, block)),),
        (
            records,
            plan.slot_indices,
            plan.prev_slot_indices,
            plan.expected_positions,
            plan.expected_tokens,
            plan.num_valid,
            state.ring.rows,
            state.ring.write_index,
            state.kernel_run_counters,
            state.slot_run_counters,
            state.step,
            layer_pointers,
        ),
        (state.ring.capacity, *real_kv_shape, int(launch_tag), n),
        CHECK_TOKENS=check_tokens,
        CHECK_REAL_KV=real_kv is not None,
        RECORD_VIOLATIONS=record_violations,
        num_warps=warps,
        HOST_COUNTED=num_entries is not None,
        BLOCK=block,
        **real_kv_tile,
    )
