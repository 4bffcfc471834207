"""Fill a forward's verify and write plans on device, with fixed shapes and no host sync."""

from __future__ import annotations

import torch

from kv_canary.forward_rows import ForwardRows
from kv_canary.plans import PREV_SEQUENCE_START, PREV_UNKNOWN, TOKEN_UNKNOWN, VerifyPlan, WritePlan


def build_verify_plan(plan: VerifyPlan, rows: ForwardRows, *, plan_overflow: torch.Tensor,
                      window: int | None = None, full_to_swa: torch.Tensor | None = None) -> int | None:
    """Plan every slot the forward's attention reads; returns the exact entry count when the host
    knows it, None when only the device does (graph capture: launch over the whole plan).

    FULL groups read each request's whole prefix ``[0, prefix_len)``; SWA groups (``window``
    and ``full_to_swa`` given) read ``[prefix_len - window, prefix_len)`` in their own sub-pool.
    """
    device = plan.slot_indices.device
    prefix = rows.prefix_lens.to(device=device, dtype=torch.int64)
    first = (prefix - window).clamp(min=0) if window is not None else torch.zeros_like(prefix)
    counts = prefix - first
    ends = torch.cumsum(counts, 0)
    total = ends[-1:] if rows.batch_size else torch.zeros(1, dtype=torch.int64, device=device)
    plan.num_valid.copy_(total.clamp(max=plan.capacity))
    plan_overflow.add_((total - plan.capacity).clamp(min=0))
    exact = None if rows.prefix_lens_host is None else min(plan.capacity, _host_total(rows.prefix_lens_host, window))
    n = plan.capacity if exact is None else exact
    if n == 0 or rows.batch_size == 0:
        return exact

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
    plan.expected_positions[:n].copy_(position)
    plan.expected_tokens[:n].copy_(_recorded_tokens(rows, row, position))
    return exact


def build_write_plan(plan: WritePlan, rows: ForwardRows, *, plan_overflow: torch.Tensor,
                     full_to_swa: torch.Tensor | None = None) -> tuple[int, int | None]:
    """Plan the forward's new slots in per-request runs; returns (entries, longest run) hints."""
    device = plan.slot_indices.device
    num_requests = min(rows.batch_size, plan.request_capacity)
    n = min(rows.num_new_tokens, plan.capacity)
    extend = rows.extend_lens.to(device=device, dtype=torch.int64)
    starts = torch.cumsum(extend, 0) - extend
    kept = ((starts + extend).clamp(max=plan.capacity) - starts).clamp(min=0)  # entries that fit the plan
    plan_overflow.add_((extend - kept).sum())
    plan.num_requests.fill_(num_requests)
    if num_requests == 0:
        return 0, None
    plan.entry_starts[:num_requests].copy_(starts[:num_requests])
    plan.entry_counts[:num_requests].copy_(kept[:num_requests])
    if rows.batch_size > num_requests:
        plan_overflow.add_(kept[num_requests:].sum())

    prefix = rows.prefix_lens.to(device=device, dtype=torch.int64)
    row = rows.req_pool_indices.to(device=device, dtype=torch.int64)
    pred = rows.req_to_token[row, (prefix - 1).clamp(min=0)].to(torch.int64)
    if full_to_swa is not None:
        pred = full_to_swa[pred]
        pred = torch.where(pred == 0, PREV_UNKNOWN, pred)
    pred = torch.where(prefix == 0, PREV_SEQUENCE_START, pred)
    plan.pred_slots[:num_requests].copy_(pred[:num_requests])
    if n == 0:
        return 0, 0

    request = torch.repeat_interleave(torch.arange(rows.batch_size, device=device), extend,
                                      output_size=rows.num_new_tokens)[:n]
    position = prefix[request] + torch.arange(n, device=device) - starts[request]
    slot = rows.out_cache_loc[:n].to(device=device, dtype=torch.int64)
    if full_to_swa is not None:
        slot = full_to_swa[slot]
    plan.slot_indices[:n].copy_(slot)
    plan.tokens[:n].copy_(rows.input_ids[:n])
    plan.positions[:n].copy_(rows.positions[:n])
    plan.expected_positions[:n].copy_(position)
    plan.expected_tokens[:n].copy_(_recorded_tokens(rows, row[request], position))
    return n, rows.longest_run


def _recorded_tokens(rows: ForwardRows, row: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    if rows.req_token_ids is None:
        return torch.full_like(position, TOKEN_UNKNOWN)
    width = rows.req_token_ids.shape[1]
    return rows.req_token_ids[row, position.clamp(max=width - 1)].to(torch.int64)


def _host_total(prefix_lens: tuple[int, ...], window: int | None) -> int:
    return sum(prefix_lens) if window is None else sum(min(n, window) for n in prefix_lens)
