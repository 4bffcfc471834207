"""The torch kernels' verify: one launch tag's records over a plan (the reference of the Triton verify
programs, ``forward_triton`` and ``sweep_triton``)."""

from __future__ import annotations

import torch

from kv_canary.device_state import CanaryDeviceState, RingField
from kv_canary.kernels.hash_reference import CHAIN_ANCHOR, real_kv_row_hash, record_hash
from kv_canary.kernels.ring_reference import append_violations
from kv_canary.launch_tags import FailReason, LaunchTag
from kv_canary.plans import PADDING_POSITION, TOKEN_UNKNOWN, VerifyPlan
from kv_canary.real_kv import RealKvSource
from kv_canary.records import RecordWord


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
    """Check each planned slot's record against its expected position, chain hash, token and real K/V.

    ``num_entries`` is the plan's valid entry count when the host knows it; None launches over the
    whole plan and lets ``plan.num_valid`` decide on device (as under CUDA-graph capture).
    """
    n = plan.capacity if num_entries is None else min(num_entries, plan.capacity)
    slots = plan.slot_indices[:n].to(torch.int64)
    prev_slots = plan.prev_slot_indices[:n].to(torch.int64)
    expected_positions = plan.expected_positions[:n].to(torch.int64)
    expected_tokens = plan.expected_tokens[:n].to(torch.int64)
    active = (torch.arange(n, device=slots.device) < plan.num_valid) & (expected_positions != PADDING_POSITION)

    stored = records[slots]
    predecessor = records[prev_slots.clamp(min=0)]
    expected_prev_hash = torch.where(
        prev_slots == 0,
        CHAIN_ANCHOR,
        record_hash(
            predecessor[:, RecordWord.TOKEN], predecessor[:, RecordWord.POSITION], predecessor[:, RecordWord.PREV_HASH]
        ),
    )

    bits = torch.where(stored[:, RecordWord.POSITION] != expected_positions, int(FailReason.POSITION), 0)
    bits |= torch.where(
        (prev_slots >= 0) & (stored[:, RecordWord.PREV_HASH] != expected_prev_hash), int(FailReason.CHAIN_HASH), 0
    )
    if check_tokens:
        bits |= torch.where(
            (expected_tokens >= 0) & (stored[:, RecordWord.TOKEN] != expected_tokens), int(FailReason.TOKEN), 0
        )
    else:
        expected_tokens = torch.full_like(expected_tokens, TOKEN_UNKNOWN)  # not read, so not reported
    expected_real_kv = torch.zeros_like(slots)
    if real_kv is not None:
        expected_real_kv = real_kv_row_hash([words[slots, : real_kv.hashed_words] for words in real_kv.layer_words])
        bits |= torch.where(stored[:, RecordWord.REAL_KV_HASH] != expected_real_kv, int(FailReason.REAL_KV_HASH), 0)
    bits = torch.where(active, bits, 0)

    state.kernel_run_counters[launch_tag] += 1
    state.slot_run_counters[launch_tag] += active.sum()
    if not record_violations:
        return
    append_violations(
        state.ring,
        {
            RingField.LAUNCH_TAG: torch.full_like(slots, int(launch_tag)),
            RingField.FAIL_BITS: bits,
            RingField.SLOT: slots,
            RingField.POSITION: expected_positions,
            RingField.STORED_TOKEN: stored[:, RecordWord.TOKEN],
            RingField.EXPECTED_TOKEN: expected_tokens,
            RingField.STEP: state.step.expand(n),
            RingField.STORED_POSITION: stored[:, RecordWord.POSITION],
            RingField.STORED_PREV_HASH: stored[:, RecordWord.PREV_HASH],
            RingField.EXPECTED_PREV_HASH: expected_prev_hash,
            RingField.STORED_REAL_KV_HASH: stored[:, RecordWord.REAL_KV_HASH],
            RingField.EXPECTED_REAL_KV_HASH: expected_real_kv,
        },
        bits != 0,
    )
