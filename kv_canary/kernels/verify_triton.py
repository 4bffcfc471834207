"""Triton verify kernel and its launcher (same signature as ``verify_reference.verify_canaries``)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kv_canary.device_state import CanaryDeviceState
from kv_canary.kernels.hash_triton import CHAIN_ANCHOR_U64, as_u64, real_kv_hash, record_hash
from kv_canary.kernels.ring_triton import append_violations
from kv_canary.launch_tags import LaunchTag
from kv_canary.plans import VerifyPlan
from kv_canary.real_kv import RealKvSource

_BLOCK = 512
_BLOCK_WITH_REAL_KV = 128
_WORD_CHUNK = 8


@triton.jit
def _verify_kernel(records_ptr, slot_ptr, prev_slot_ptr, expected_position_ptr, expected_token_ptr, num_valid_ptr,
                   ring_rows_ptr, ring_index_ptr, ring_capacity, kernel_runs_ptr, slot_runs_ptr, step_ptr,
                   layer_pointers_ptr, num_layers, row_words, hashed_words, launch_tag, num_entries,
                   CHECK_TOKENS: tl.constexpr, CHECK_REAL_KV: tl.constexpr, RECORD_VIOLATIONS: tl.constexpr,
                   WORD_CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if pid == 0:
        tl.atomic_add(kernel_runs_ptr + launch_tag, 1)
    entry = pid * BLOCK + tl.arange(0, BLOCK)
    in_plan = (entry < num_entries) & (entry < tl.load(num_valid_ptr))
    slot = tl.load(slot_ptr + entry, mask=in_plan, other=0)
    active = in_plan & (slot != 0)

    record = records_ptr + slot.to(tl.int64) * 4
    token = tl.load(record + 0, mask=active, other=0)
    position = tl.load(record + 1, mask=active, other=0)
    prev_hash = as_u64(tl.load(record + 2, mask=active, other=0))
    stored_real_kv = as_u64(tl.load(record + 3, mask=active, other=0))

    prev_slot = tl.load(prev_slot_ptr + entry, mask=active, other=-1)
    has_pred = active & (prev_slot > 0)
    pred = records_ptr + tl.maximum(prev_slot, 0).to(tl.int64) * 4
    pred_hash = record_hash(tl.load(pred + 0, mask=has_pred, other=0), tl.load(pred + 1, mask=has_pred, other=0),
                            as_u64(tl.load(pred + 2, mask=has_pred, other=0)))
    expected_prev_hash = tl.where(prev_slot == 0, tl.zeros_like(pred_hash) + CHAIN_ANCHOR_U64, pred_hash)

    expected_position = tl.load(expected_position_ptr + entry, mask=active, other=0)
    expected_token = tl.load(expected_token_ptr + entry, mask=active, other=-1)
    bits = tl.where(position != expected_position, 2, 0)
    bits |= tl.where((prev_slot >= 0) & (prev_hash != expected_prev_hash), 1, 0)
    if CHECK_TOKENS:
        bits |= tl.where((expected_token >= 0) & (token != expected_token), 4, 0)
    expected_real_kv = tl.zeros_like(stored_real_kv)
    if CHECK_REAL_KV:
        expected_real_kv = real_kv_hash(layer_pointers_ptr, num_layers, row_words, hashed_words, slot, active,
                                        WORD_CHUNK)
        bits |= tl.where(stored_real_kv != expected_real_kv, 8, 0)
    bits = tl.where(active, bits, 0)

    tl.atomic_add(slot_runs_ptr + launch_tag, tl.sum(active.to(tl.int64), axis=0))
    if RECORD_VIOLATIONS:
        append_violations(ring_rows_ptr, ring_index_ptr, ring_capacity, bits != 0, launch_tag, bits, slot,
                          expected_position, token, expected_token, tl.load(step_ptr), position, prev_hash,
                          expected_prev_hash, stored_real_kv, expected_real_kv)


def verify_canaries(*, records: torch.Tensor, plan: VerifyPlan, launch_tag: LaunchTag, state: CanaryDeviceState,
                    real_kv: RealKvSource | None, check_tokens: bool, record_violations: bool = True,
                    num_entries: int | None = None) -> None:
    n = plan.capacity if num_entries is None else min(num_entries, plan.capacity)
    block = _BLOCK if real_kv is None else _BLOCK_WITH_REAL_KV
    layer_pointers = state.step if real_kv is None else real_kv.layer_pointers
    _verify_kernel[(max(1, triton.cdiv(n, block)),)](
        records, plan.slot_indices, plan.prev_slot_indices, plan.expected_positions, plan.expected_tokens,
        plan.num_valid, state.ring.rows, state.ring.write_index, state.ring.capacity, state.kernel_run_counters,
        state.slot_run_counters, state.step, layer_pointers,
        0 if real_kv is None else len(real_kv.layer_words), 0 if real_kv is None else real_kv.row_words,
        0 if real_kv is None else real_kv.hashed_words, int(launch_tag), n,
        CHECK_TOKENS=check_tokens, CHECK_REAL_KV=real_kv is not None, RECORD_VIOLATIONS=record_violations,
        WORD_CHUNK=_WORD_CHUNK, BLOCK=block)
