"""Turn a radix walk into a verify plan for one pool group: the torch reference sweep's input."""

from __future__ import annotations

import torch

from kv_canary.buffer_group import CanaryBufferGroup
from kv_canary.engine_protocols import RadixWalk
from kv_canary.plans import PADDING_POSITION, PREV_SEQUENCE_START, PREV_UNKNOWN, VerifyPlan


def build_sweep_plan(walk: RadixWalk, group: CanaryBufferGroup, swa_resident: torch.Tensor | None = None) -> VerifyPlan:
    """One entry per walked token, expecting the radix key's token at the node's depth.

    FULL groups verify the walked full-pool slots as they are. SWA groups translate slot and
    predecessor through ``full_to_swa_index_mapping``: a slot mapping to 0 (not resident: it
    slid out of a window before the node was cached), and a token of a tombstoned node
    (``swa_resident`` false), become padding, which the verify skips; a predecessor mapping to 0
    becomes ``PREV_UNKNOWN``, so only that entry's chain check is skipped.

    The plan is sized to the walk: the sweep runs between forwards, never inside a captured
    graph, so it may allocate.
    """
    slots, prev_slots, positions = walk.slots, walk.prev_slots, walk.positions
    mapping = group.full_to_swa_index_mapping
    if mapping is not None:
        slots = mapping[slots]
        skipped = slots == 0 if swa_resident is None else (slots == 0) | ~swa_resident
        positions = torch.where(skipped, PADDING_POSITION, positions)
        prev_resident = mapping[prev_slots.clamp(min=0)]
        prev_slots = torch.where(
            prev_slots == PREV_SEQUENCE_START,
            PREV_SEQUENCE_START,
            torch.where(prev_resident == 0, PREV_UNKNOWN, prev_resident),
        )
    n = walk.num_tokens
    # At least one entry, so that every plan tensor has storage for the kernels to point at.
    plan = VerifyPlan.allocate(max(n, 1), slots.device)
    plan.slot_indices[:n].copy_(slots)
    plan.prev_slot_indices[:n].copy_(prev_slots)
    plan.expected_positions[:n].copy_(positions)
    plan.expected_tokens[:n].copy_(walk.tokens)
    plan.num_valid.fill_(n)
    return plan
