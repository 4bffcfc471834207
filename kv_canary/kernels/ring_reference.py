"""Appending violation rows to the device ring, in torch, without a host sync."""

from __future__ import annotations

import torch

from kv_canary.device_state import RING_FIELDS, RingField, ViolationRing


def append_violations(ring: ViolationRing, fields: dict[RingField, torch.Tensor], violating: torch.Tensor) -> None:
    """Write one row per ``violating`` entry at ``write_index % capacity`` and advance the index.

    Rows are scattered into a copy with one spare row that absorbs the non-violating entries,
    so no boolean indexing (a device sync) is needed.
    """
    n = violating.shape[0]
    if n == 0:
        return
    capacity = ring.capacity
    violating64 = violating.to(torch.int64)
    rank = torch.cumsum(violating64, 0) - violating64
    destination = torch.where(violating, (ring.write_index + rank) % capacity, capacity)
    rows = torch.zeros(n, RING_FIELDS, dtype=torch.int64, device=violating.device)
    for field, values in fields.items():
        rows[:, field] = values
    staged = torch.cat([ring.rows, ring.rows.new_zeros(1, RING_FIELDS)])
    staged.index_copy_(0, destination, rows)
    ring.rows.copy_(staged[:capacity])
    ring.write_index.add_(violating64.sum())
