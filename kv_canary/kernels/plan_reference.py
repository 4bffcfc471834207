"""The torch kernels' plan builder: a forward's verify and write plans for one pool group.

Fills a pool group's verify and write plans on device with fixed shapes and no host sync, so
the pre-ops can be captured in a CUDA graph; about thirty small torch ops, which is why the
Triton kernels derive their entries inside their launches instead.
"""

from __future__ import annotations

import torch

from kv_canary.forward_rows import ForwardRows
from kv_canary.plans import (
    PADDING_POSITION,
    PADDING_ROW,
    PREV_SEQUENCE_START,
    PREV_UNKNOWN,
    TOKEN_UNKNOWN,
    VerifyPlan,
    WritePlan,
)


def build_group_plans(
    *,
    verify_plan: VerifyPlan,
    write_plan: WritePlan,
    rows: ForwardRows,
    plan_overflow: torch.Tensor,
    window: int | None = None,
    full_to_swa: torch.Tensor | None = None,
) -> tuple[int | None, int, int | None]:
    """Plan every slot the forward's attention reads and every slot it writes.

    FULL groups read each request's whole prefix ``[0, prefix_len)``; SWA groups (``window``
    and ``full_to_swa`` given) read ``[prefix_len - window, prefix_len)`` in their own sub-pool; a
    window position mapped to 0 (not resident) is planned at slot 0 and so fails its verify.
    Entries of requests on the padding row are planned as padding (skipped). The new slots are
    planned in per-request runs, each chained from the slot of the request's last cached position.
    Entries past a plan's capacity, and the runs of requests past the write plan's request
    capacity, are dropped and added to ``plan_overflow``.

    Returns the host hints ``(verify entries, write entries, longest run)``: see ``host_hints``.
    """
    _build_verify_plan(verify_plan, rows, plan_overflow=plan_overflow, window=window, full_to_swa=full_to_swa)
    _build_write_plan(write_plan, rows, plan_overflow=plan_overflow, full_to_swa=full_to_swa)
    return host_hints(verify_plan=verify_plan, write_plan=write_plan, rows=rows, window=window)


def host_hints(
    *, verify_plan: VerifyPlan, write_plan: WritePlan, rows: ForwardRows, window: int | None
) -> tuple[int | None, int, int | None]:
    """What the host knows of the plans without reading the device.

    The exact verify entry count when the engine gave host prefix lengths, None when only the
    device knows it (graph capture: verify launches span the whole plan); the write entries;
    the longest run of one request, None when unknown (or no request).
    """
    verify_entries = None
    if rows.prefix_lens_host is not None:
        verify_entries = min(verify_plan.capacity, verify_entries_needed(rows.prefix_lens_host, window))
    if min(rows.batch_size, write_plan.request_capacity) == 0:
        return verify_entries, 0, None
    write_entries = min(rows.num_new_tokens, write_plan.capacity)
    return verify_entries, write_entries, rows.longest_run if write_entries else 0


def _build_verify_plan(
    plan: VerifyPlan,
    rows: ForwardRows,
    *,
    plan_overflow: torch.Tensor,
    window: int | None,
    full_to_swa: torch.Tensor | None,
) -> None:
    device = plan.slot_indices.device
    prefix = rows.prefix_len_tensor().to(device=device, dtype=torch.int64)
    first = (prefix - window).clamp(min=0) if window is not None else torch.zeros_like(prefix)
    counts = prefix - first
    ends = torch.cumsum(counts, 0)
    total = ends[-1:] if rows.batch_size else torch.zeros(1, dtype=torch.int64, device=device)
    plan.num_valid.copy_(total.clamp(max=plan.capacity))
    plan_overflow.add_((total - plan.capacity).clamp(min=0))
    n = plan.capacity
    if rows.prefix_lens_host is not None:
        n = min(plan.capacity, verify_entries_needed(rows.prefix_lens_host, window))
    if n == 0 or rows.batch_size == 0:
        return

    entry = torch.arange(n, device=device)
    request = torch.searchsorted(ends, entry, right=True).clamp(max=rows.batch_size - 1)
    valid = entry < total
    position = torch.where(valid, first[request] + entry - (ends[request] - counts[request]), 0)
    row = rows.req_pool_indices.to(device=device, dtype=torch.int64)[request]
    slot = rows.req_to_token[row, position].to(torch.int64)
    prev = rows.req_to_token[row, (position - 1).clamp(min=0)].to(torch.int64)
    if full_to_swa is not None:
        slot, prev = full_to_swa[slot], full_to_swa[prev]
        prev = torch.where(prev == 0, PREV_UNKNOWN, prev)
    prev = torch.where(position == 0, PREV_SEQUENCE_START, prev)

    plan.slot_indices[:n].copy_(torch.where(valid, slot, 0))
    plan.prev_slot_indices[:n].copy_(prev)
    # Batch entries padded onto the padding row (CUDA-graph batches) read nothing real: skip them.
    plan.expected_positions[:n].copy_(torch.where(row == PADDING_ROW, PADDING_POSITION, position))
    plan.expected_tokens[:n].copy_(_recorded_tokens(rows, row, position))


def _build_write_plan(
    plan: WritePlan, rows: ForwardRows, *, plan_overflow: torch.Tensor, full_to_swa: torch.Tensor | None
) -> None:
    device = plan.slot_indices.device
    num_requests = min(rows.batch_size, plan.request_capacity)
    n = min(rows.num_new_tokens, plan.capacity)
    extend = rows.extend_len_tensor().to(device=device, dtype=torch.int64)
    starts = torch.cumsum(extend, 0) - extend
    kept = ((starts + extend).clamp(max=plan.capacity) - starts).clamp(min=0)  # entries that fit the plan
    plan_overflow.add_((extend - kept).sum())
    plan.num_requests.fill_(num_requests)
    if num_requests == 0:
        return
    plan.entry_starts[:num_requests].copy_(starts[:num_requests])
    plan.entry_counts[:num_requests].copy_(kept[:num_requests])
    if rows.batch_size > num_requests:
        plan_overflow.add_(kept[num_requests:].sum())

    prefix = rows.prefix_len_tensor().to(device=device, dtype=torch.int64)
    row = rows.req_pool_indices.to(device=device, dtype=torch.int64)
    pred = rows.req_to_token[row, (prefix - 1).clamp(min=0)].to(torch.int64)
    if full_to_swa is not None:
        pred = full_to_swa[pred]
        pred = torch.where(pred == 0, PREV_UNKNOWN, pred)
    pred = torch.where(prefix == 0, PREV_SEQUENCE_START, pred)
    plan.pred_slots[:num_requests].copy_(pred[:num_requests])
    if n == 0:
        return

    request = torch.repeat_interleave(
        torch.arange(rows.batch_size, device=device), extend, output_size=rows.num_new_tokens
    )[:n]
    position = prefix[request] + torch.arange(n, device=device) - starts[request]
    slot = rows.out_cache_loc[:n].to(device=device, dtype=torch.int64)
    if full_to_swa is not None:
        slot = full_to_swa[slot]
    plan.slot_indices[:n].copy_(slot)
    plan.tokens[:n].copy_(rows.input_ids[:n])
    plan.positions[:n].copy_(rows.positions[:n])
    plan.expected_positions[:n].copy_(position)
    plan.expected_tokens[:n].copy_(_recorded_tokens(rows, row[request], position))


def _recorded_tokens(rows: ForwardRows, row: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    if rows.req_token_ids is None:
        return torch.full_like(position, TOKEN_UNKNOWN)
    width = rows.req_token_ids.shape[1]
    return rows.req_token_ids[row, position.clamp(max=width - 1)].to(torch.int64)


def verify_entries_needed(prefix_lens: tuple[int, ...], window: int | None) -> int:
    return sum(prefix_lens) if window is None else sum(min(n, window) for n in prefix_lens)
