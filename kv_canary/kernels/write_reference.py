"""Torch reference of the record writes: a forward's new slots, chained from each request's predecessor.

The Triton kernel (``forward_triton``) writes the same records inside its per-forward launches.
"""

from __future__ import annotations

import math

import torch

from kv_canary.device_state import CanaryDeviceState, RingField
from kv_canary.kernels.hash_reference import CHAIN_ANCHOR, link_hash, real_kv_row_hash, record_hash, rotate_left
from kv_canary.kernels.lost_write_reference import lost_write_layers, poison_rows
from kv_canary.kernels.ring_reference import append_violations
from kv_canary.launch_tags import FailReason, LaunchTag
from kv_canary.plans import WritePlan
from kv_canary.real_kv import RealKvSource
from kv_canary.records import RecordWord


def write_canaries(
    *,
    records: torch.Tensor,
    plan: WritePlan,
    launch_tag: LaunchTag,
    state: CanaryDeviceState,
    real_kv: RealKvSource | None,
    assert_inputs: bool,
    num_entries: int | None = None,
    poison: RealKvSource | None = None,
    lost_write_check: RealKvSource | None = None,
) -> None:
    """Write the records of a forward's new slots, chained from each request's predecessor slot.

    ``num_entries`` bounds the plan's entries (a host-side hint; None: the plan's capacity).
    ``real_kv`` is hashed into the records (TAIL). Before the model runs, ``poison`` marks the new
    slots' rows of that source; after it, ``lost_write_check`` reports the rows still marked
    (``kernels/lost_write_reference.py``).
    """
    n = plan.capacity if num_entries is None else min(num_entries, plan.capacity)
    device = records.device
    entry = torch.arange(n, device=device)
    request_ends = torch.cumsum(plan.entry_counts.to(torch.int64), 0)
    request_ends = torch.where(
        torch.arange(plan.request_capacity, device=device) < plan.num_requests,
        request_ends,
        torch.iinfo(torch.int64).max,
    )
    request = torch.searchsorted(request_ends, entry, right=True).clamp(max=plan.request_capacity - 1)
    starts = plan.entry_starts.to(torch.int64)[request]
    offset = entry - starts
    in_plan = (request < plan.num_requests) & (offset < plan.entry_counts.to(torch.int64)[request])

    slots = plan.slot_indices[:n].to(torch.int64)
    tokens = plan.tokens[:n].to(torch.int64)
    positions = plan.positions[:n].to(torch.int64)
    expected_tokens = plan.expected_tokens[:n].to(torch.int64)
    expected_positions = plan.expected_positions[:n].to(torch.int64)

    pred_slots = plan.pred_slots.to(torch.int64)[request]
    pred = records[pred_slots.clamp(min=0)]
    first_prev_hash = torch.where(
        pred_slots == 0,
        CHAIN_ANCHOR,
        torch.where(
            pred_slots > 0,
            record_hash(pred[:, RecordWord.TOKEN], pred[:, RecordWord.POSITION], pred[:, RecordWord.PREV_HASH]),
            0,
        ),
    )
    prev_hash = _chain_scan(first_prev_hash, tokens, positions, offset)

    bits = torch.zeros_like(slots)
    if assert_inputs:
        bits |= torch.where((expected_tokens >= 0) & (tokens != expected_tokens), int(FailReason.WRITE_TOKEN), 0)
        breaks_chain = (offset == 0) & (pred_slots > 0) & (pred[:, RecordWord.POSITION] + 1 != positions)
        bits |= torch.where((positions != expected_positions) | breaks_chain, int(FailReason.WRITE_POSITION), 0)
    bits = torch.where(in_plan, bits, 0)

    stores = in_plan & (slots != 0)
    if lost_write_check is not None:
        lost = stores & (lost_write_layers(lost_write_check, slots) > 0)
        bits |= torch.where(lost, int(FailReason.LOST_WRITE), 0)
    real_kv_hash = torch.zeros_like(slots)
    if real_kv is not None:
        real_kv_hash = real_kv_row_hash([words[slots, : real_kv.hashed_words] for words in real_kv.layer_words])
    if poison is not None:
        poison_rows(poison, slots, stores)
    destination = torch.where(stores, slots, 0)
    new_records = torch.stack([tokens, positions, prev_hash, real_kv_hash], dim=1)
    # Entries that store nothing rewrite the padding row with its own value, keeping the scatter sync-free.
    records.index_put_((destination,), torch.where(stores[:, None], new_records, records[destination]))

    append_violations(
        state.ring,
        {
            RingField.LAUNCH_TAG: torch.full_like(slots, int(launch_tag)),
            RingField.FAIL_BITS: bits,
            RingField.SLOT: slots,
            RingField.POSITION: expected_positions,
            RingField.STORED_TOKEN: tokens,
            RingField.EXPECTED_TOKEN: expected_tokens,
            RingField.STEP: state.step.expand(n),
            RingField.STORED_POSITION: positions,
            RingField.STORED_PREV_HASH: prev_hash,
            RingField.STORED_REAL_KV_HASH: real_kv_hash,
        },
        bits != 0,
    )


def _chain_scan(
    first_prev_hash: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor, offset: torch.Tensor
) -> torch.Tensor:
    """prev_hash of every entry: a segmented Hillis-Steele scan of ``x -> rotl(x, k) ^ c`` maps.

    Entry ``i`` of a run contributes ``(link_hash(token[i-1], position[i-1]), 1)``; the run's
    first entry contributes the constant ``(first_prev_hash, 0)``.
    """
    n = tokens.shape[0]
    previous_link = link_hash(torch.roll(tokens, 1), torch.roll(positions, 1))
    constant = torch.where(offset == 0, first_prev_hash, previous_link)
    rotation = torch.where(offset == 0, 0, 1)
    distance = 1
    for _ in range(math.ceil(math.log2(max(n, 2)))):
        reaches = offset >= distance
        earlier_constant = torch.roll(constant, distance)
        earlier_rotation = torch.roll(rotation, distance)
        constant = torch.where(reaches, rotate_left(earlier_constant, rotation) ^ constant, constant)
        rotation = torch.where(reaches, earlier_rotation + rotation, rotation)
        distance *= 2
    return constant
