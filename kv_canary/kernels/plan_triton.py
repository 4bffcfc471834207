"""Triton plan builder and its launcher (same signature as ``plan_reference.build_group_plans``).

One launch fills a pool group's verify and write plans. Program ``(request, split)`` works for
one request: it finds where the request's entries start in each plan by summing the counts of
the requests before it (every program reads all the batch's prefix and extend lengths as one
vector, cheaper than a second launch for a scan), then fills every ``splits``-th block of the
request's verify and write entries, so that a long prefix is spread over many programs instead
of one program's serial loop. Program (0, 0) writes the totals: ``num_valid``, ``num_requests``
and the entries dropped for want of capacity.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kv_canary.forward_rows import ForwardRows
from kv_canary.kernels.forward_launch import ForwardLaunchCache
from kv_canary.kernels.plan_reference import host_hints
from kv_canary.plans import (
    PADDING_POSITION,
    PADDING_ROW,
    PREV_SEQUENCE_START,
    PREV_UNKNOWN,
    TOKEN_UNKNOWN,
    VerifyPlan,
    WritePlan,
)

PREV_SEQUENCE_START_C: tl.constexpr = tl.constexpr(PREV_SEQUENCE_START)
PREV_UNKNOWN_C: tl.constexpr = tl.constexpr(PREV_UNKNOWN)
TOKEN_UNKNOWN_C: tl.constexpr = tl.constexpr(TOKEN_UNKNOWN)
PADDING_POSITION_C: tl.constexpr = tl.constexpr(PADDING_POSITION)
PADDING_ROW_C: tl.constexpr = tl.constexpr(PADDING_ROW)

_BLOCK = 128  # entries per program per step: one per thread of four warps
_NUM_WARPS = 4
_MAX_REQUEST_BLOCK = 1024  # the batch's lengths are read in vectors of up to this many requests
# Programs worth launching: an H100's 132 SMs several times over. Requests get more programs
# (splits) only while the grid stays under this; past it extra programs only find no work.
_TARGET_PROGRAMS = 1024


@triton.jit
def _verify_range(prefix, window, WINDOWED: tl.constexpr):
    """(first position read, positions read) per request: the whole prefix, or its last ``window``."""
    if WINDOWED:
        first = tl.maximum(prefix - window, 0)
    else:
        first = tl.zeros_like(prefix)
    return first, prefix - first


@triton.jit
def _translate(slot, full_to_swa_ptr, mask, TRANSLATE: tl.constexpr):
    """A full-pool slot in the group's own pool (SWA: through the mapping, 0 = not resident)."""
    if TRANSLATE:
        slot = tl.load(full_to_swa_ptr + slot, mask=mask, other=0).to(tl.int64)
    return slot


@triton.jit
def _predecessor(prev_slot, position, TRANSLATE: tl.constexpr):
    """The chain predecessor of the slot at ``position``, as the verify and write kernels expect it."""
    if TRANSLATE:
        prev_slot = tl.where(prev_slot == 0, PREV_UNKNOWN_C, prev_slot)  # slid out of the window
    return tl.where(position == 0, PREV_SEQUENCE_START_C, prev_slot)


@triton.jit
def _recorded_tokens(row_token_ids, width, position, mask, HAS_TOKEN_IDS: tl.constexpr):
    tokens = tl.zeros_like(position) + TOKEN_UNKNOWN_C
    if HAS_TOKEN_IDS:
        tokens = tl.load(row_token_ids + tl.minimum(position, width - 1), mask=mask, other=TOKEN_UNKNOWN_C)
    return tokens.to(tl.int32)


@triton.jit(
    do_not_specialize=[
        "batch_size",
        "num_new_tokens",
        "verify_capacity",
        "write_capacity",
        "request_capacity",
        "window",
        "req_to_token_stride",
        "token_ids_stride",
        "token_ids_width",
    ]
)
def _plan_kernel(
    req_pool_index_ptr,
    prefix_len_ptr,
    extend_len_ptr,
    out_cache_loc_ptr,
    input_id_ptr,
    position_ptr,
    req_to_token_ptr,
    token_ids_ptr,
    full_to_swa_ptr,
    verify_slot_ptr,
    verify_prev_slot_ptr,
    verify_position_ptr,
    verify_token_ptr,
    num_valid_ptr,
    entry_start_ptr,
    entry_count_ptr,
    pred_slot_ptr,
    num_requests_ptr,
    write_slot_ptr,
    write_token_ptr,
    write_position_ptr,
    write_expected_token_ptr,
    write_expected_position_ptr,
    plan_overflow_ptr,
    batch_size,
    num_new_tokens,
    verify_capacity,
    write_capacity,
    request_capacity,
    window,
    req_to_token_stride,
    token_ids_stride,
    token_ids_width,
    WINDOWED: tl.constexpr,
    TRANSLATE: tl.constexpr,
    HAS_TOKEN_IDS: tl.constexpr,
    REQUEST_BLOCK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    request = tl.program_id(0)
    split = tl.program_id(1)
    splits = tl.num_programs(1)

    verify_before = tl.zeros([REQUEST_BLOCK], tl.int64)
    verify_total = tl.zeros([REQUEST_BLOCK], tl.int64)
    write_before = tl.zeros([REQUEST_BLOCK], tl.int64)
    write_total = tl.zeros([REQUEST_BLOCK], tl.int64)
    write_listed = tl.zeros([REQUEST_BLOCK], tl.int64)  # new tokens of the requests the write plan lists
    for first_request in range(0, batch_size, REQUEST_BLOCK):
        other = first_request + tl.arange(0, REQUEST_BLOCK)
        in_batch = other < batch_size
        other_extend = tl.load(extend_len_ptr + other, mask=in_batch, other=0).to(tl.int64)
        _, other_reads = _verify_range(
            tl.load(prefix_len_ptr + other, mask=in_batch, other=0).to(tl.int64), window, WINDOWED
        )
        verify_before += tl.where(other < request, other_reads, 0)
        verify_total += other_reads
        write_before += tl.where(other < request, other_extend, 0)
        write_total += other_extend
        write_listed += tl.where(other < request_capacity, other_extend, 0)

    if request < batch_size:
        verify_start = tl.sum(verify_before, axis=0)
        write_start = tl.sum(write_before, axis=0)
        row = tl.load(req_pool_index_ptr + request).to(tl.int64)
        prefix = tl.load(prefix_len_ptr + request).to(tl.int64)
        extend = tl.load(extend_len_ptr + request).to(tl.int64)
        row_slots = req_to_token_ptr + row * req_to_token_stride
        row_token_ids = token_ids_ptr + row * token_ids_stride
        lane = tl.arange(0, BLOCK)

        # Verify entries: the positions the forward's attention reads, cut at the plan's capacity.
        first_position, reads = _verify_range(prefix, window, WINDOWED)
        verify_kept = tl.minimum(reads, tl.maximum(verify_capacity - verify_start, 0))
        for block in range(split, tl.cdiv(verify_kept, BLOCK).to(tl.int32), splits):
            offset = block * BLOCK + lane
            mask = offset < verify_kept
            entry = verify_start + offset
            position = first_position + offset
            slot = tl.load(row_slots + position, mask=mask, other=0).to(tl.int64)
            prev_slot = tl.load(row_slots + tl.maximum(position - 1, 0), mask=mask, other=0).to(tl.int64)
            tl.store(
                verify_slot_ptr + entry, _translate(slot, full_to_swa_ptr, mask, TRANSLATE).to(tl.int32), mask=mask
            )
            prev_slot = _predecessor(_translate(prev_slot, full_to_swa_ptr, mask, TRANSLATE), position, TRANSLATE)
            tl.store(verify_prev_slot_ptr + entry, prev_slot.to(tl.int32), mask=mask)
            expected_position = tl.where(row == PADDING_ROW_C, PADDING_POSITION_C, position)  # padded entries
            tl.store(verify_position_ptr + entry, expected_position.to(tl.int32), mask=mask)
            tl.store(
                verify_token_ptr + entry,
                _recorded_tokens(row_token_ids, token_ids_width, position, mask, HAS_TOKEN_IDS),
                mask=mask,
            )

        # Write entries: the request's run, listed only for requests within the request capacity,
        # filled for every request whose entries fit (the engine's new-token count bounds the reads).
        write_kept = tl.minimum(extend, tl.maximum(write_capacity - write_start, 0))
        if (split == 0) & (request < request_capacity):
            has_pred = prefix > 0
            pred_slot = tl.load(row_slots + tl.maximum(prefix - 1, 0), mask=has_pred, other=0).to(tl.int64)
            pred_slot = _predecessor(_translate(pred_slot, full_to_swa_ptr, has_pred, TRANSLATE), prefix, TRANSLATE)
            tl.store(entry_start_ptr + request, write_start.to(tl.int32))
            tl.store(entry_count_ptr + request, write_kept.to(tl.int32))
            tl.store(pred_slot_ptr + request, pred_slot.to(tl.int32))
        write_filled = tl.minimum(write_kept, tl.maximum(num_new_tokens - write_start, 0))
        for block in range(split, tl.cdiv(write_filled, BLOCK).to(tl.int32), splits):
            offset = block * BLOCK + lane
            mask = offset < write_filled
            entry = write_start + offset
            position = prefix + offset
            slot = tl.load(out_cache_loc_ptr + entry, mask=mask, other=0).to(tl.int64)
            tl.store(write_slot_ptr + entry, _translate(slot, full_to_swa_ptr, mask, TRANSLATE).to(tl.int32), mask=mask)
            tl.store(write_token_ptr + entry, tl.load(input_id_ptr + entry, mask=mask, other=0).to(tl.int32), mask=mask)
            tl.store(
                write_position_ptr + entry, tl.load(position_ptr + entry, mask=mask, other=0).to(tl.int32), mask=mask
            )
            tl.store(write_expected_position_ptr + entry, position.to(tl.int32), mask=mask)
            tl.store(
                write_expected_token_ptr + entry,
                _recorded_tokens(row_token_ids, token_ids_width, position, mask, HAS_TOKEN_IDS),
                mask=mask,
            )

    if (request == 0) & (split == 0):
        verify_entries = tl.sum(verify_total, axis=0)
        tl.store(num_valid_ptr, tl.minimum(verify_entries, verify_capacity).to(tl.int32))
        tl.store(num_requests_ptr, tl.minimum(batch_size, request_capacity).to(tl.int32))
        dropped = (
            tl.maximum(verify_entries - verify_capacity, 0)
            + tl.sum(write_total, axis=0)
            - tl.minimum(tl.sum(write_listed, axis=0), write_capacity)
        )
        tl.store(plan_overflow_ptr, tl.load(plan_overflow_ptr) + dropped)


_LAUNCHES = ForwardLaunchCache(_plan_kernel)


def build_group_plans(
    *,
    verify_plan: VerifyPlan,
    write_plan: WritePlan,
    rows: ForwardRows,
    plan_overflow: torch.Tensor,
    window: int | None = None,
    full_to_swa: torch.Tensor | None = None,
) -> tuple[int | None, int, int | None]:
    engine_tensors = _engine_tensors(rows, full_to_swa, verify_plan.slot_indices.device)
    token_ids = rows.req_token_ids
    batch_size = rows.batch_size
    _LAUNCHES.launch(
        (max(batch_size, 1), _splits_per_request(verify_plan, write_plan, rows, window)),
        (
            *engine_tensors,
            verify_plan.slot_indices,
            verify_plan.prev_slot_indices,
            verify_plan.expected_positions,
            verify_plan.expected_tokens,
            verify_plan.num_valid,
            write_plan.entry_starts,
            write_plan.entry_counts,
            write_plan.pred_slots,
            write_plan.num_requests,
            write_plan.slot_indices,
            write_plan.tokens,
            write_plan.positions,
            write_plan.expected_tokens,
            write_plan.expected_positions,
            plan_overflow,
        ),
        (
            batch_size,
            rows.num_new_tokens,
            verify_plan.capacity,
            write_plan.capacity,
            write_plan.request_capacity,
            0 if window is None else window,
            rows.req_to_token.stride(0),
            0 if token_ids is None else token_ids.stride(0),
            0 if token_ids is None else token_ids.shape[1],
        ),
        num_warps=_NUM_WARPS,
        WINDOWED=window is not None,
        TRANSLATE=full_to_swa is not None,
        HAS_TOKEN_IDS=token_ids is not None,
        REQUEST_BLOCK=min(_MAX_REQUEST_BLOCK, triton.next_power_of_2(max(batch_size, 32))),
        BLOCK=_BLOCK,
    )
    return host_hints(verify_plan=verify_plan, write_plan=write_plan, rows=rows, window=window)


def _splits_per_request(verify_plan: VerifyPlan, write_plan: WritePlan, rows: ForwardRows, window: int | None) -> int:
    """Programs per request: enough blocks for the longest run of entries one request can have.

    Without host lengths (graph capture) any request may fill a whole plan, so the grid is as
    wide as ``_TARGET_PROGRAMS`` allows; the programs left without work return at once.
    """
    longest = max(verify_plan.capacity, write_plan.capacity)
    if rows.prefix_lens_host is not None and rows.longest_run is not None:
        reads = max((n if window is None else min(n, window) for n in rows.prefix_lens_host), default=0)
        longest = max(min(reads, verify_plan.capacity), min(rows.longest_run, write_plan.capacity))
    return max(1, min(triton.cdiv(longest, _BLOCK), _TARGET_PROGRAMS // max(rows.batch_size, 1)))


def _engine_tensors(
    rows: ForwardRows, full_to_swa: torch.Tensor | None, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """The forward's tensors the kernel reads (a stand-in where one is absent), checked for its layout."""
    named = {
        "req_pool_indices": rows.req_pool_indices,
        "prefix_lens": rows.prefix_lens,
        "extend_lens": rows.extend_lens,
        "out_cache_loc": rows.out_cache_loc,
        "input_ids": rows.input_ids,
        "positions": rows.positions,
        "req_to_token": rows.req_to_token,
        "req_token_ids": rows.req_to_token if rows.req_token_ids is None else rows.req_token_ids,
        "full_to_swa_index_mapping": rows.req_to_token if full_to_swa is None else full_to_swa,
    }
    for name, tensor in named.items():
        if tensor.device != device or (tensor.numel() > 1 and tensor.stride(-1) != 1):
            raise ValueError(
                f"kv_canary plan_triton: {name} must be on the plans' device {device} with unit stride "
                f"in its last dimension (got {tensor.device}, strides {tensor.stride()}); pass "
                f"contiguous engine tensors or select the torch backend (KV_CANARY_BACKEND=torch)"
            )
    return tuple(named.values())
