"""Device-side canary state: the violation ring and the per-launch-tag run counters."""

from __future__ import annotations

import dataclasses
import enum

import torch

from kv_canary.launch_tags import LaunchTag, PoolGroupKind


class RingField(enum.IntEnum):
    """Columns of a violation row (int64)."""

    LAUNCH_TAG = 0
    FAIL_BITS = 1
    SLOT = 2
    POSITION = 3  # the position the plan expected at this slot
    STORED_TOKEN = 4  # verify: the record's token; write: the token being written
    EXPECTED_TOKEN = 5  # -1 when unknown
    STEP = 6
    STORED_POSITION = 7
    STORED_PREV_HASH = 8
    EXPECTED_PREV_HASH = 9
    STORED_REAL_KV_HASH = 10
    EXPECTED_REAL_KV_HASH = 11


RING_FIELDS = len(RingField)
NUM_LAUNCH_TAGS = len(LaunchTag)
GROUP_INDEX = {kind: index for index, kind in enumerate(PoolGroupKind)}  # rows of verify_entries


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ViolationRing:
    """Fixed-capacity ring of violation rows and a monotonic write index.

    A kernel claims row ``write_index % capacity`` with an atomic add, so the count of
    violations is never lost; only detail of rows overwritten before a drain is.
    """

    rows: torch.Tensor  # int64 [capacity, RING_FIELDS]
    write_index: torch.Tensor  # int64 [1]

    @classmethod
    def allocate(cls, capacity: int, device: torch.device | str) -> ViolationRing:
        return cls(
            rows=torch.zeros(capacity, RING_FIELDS, dtype=torch.int64, device=device),
            write_index=torch.zeros(1, dtype=torch.int64, device=device),
        )

    @property
    def capacity(self) -> int:
        return self.rows.shape[0]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CanaryDeviceState:
    ring: ViolationRing
    kernel_run_counters: torch.Tensor  # int64 [NUM_LAUNCH_TAGS]: launches per tag
    slot_run_counters: torch.Tensor  # int64 [NUM_LAUNCH_TAGS]: records checked or written per tag
    step: torch.Tensor  # int64 [1]: forward counter, advanced on device, stamped into rows
    plan_overflow: torch.Tensor  # int64 [1]: plan entries dropped because a plan was full
    verify_entries: torch.Tensor  # int64 [len(PoolGroupKind)]: per-forward verify entries, summed per group

    @classmethod
    def allocate(cls, *, ring_capacity: int, device: torch.device | str) -> CanaryDeviceState:
        def counter(n: int) -> torch.Tensor:
            return torch.zeros(n, dtype=torch.int64, device=device)

        return cls(
            ring=ViolationRing.allocate(ring_capacity, device),
            kernel_run_counters=counter(NUM_LAUNCH_TAGS),
            slot_run_counters=counter(NUM_LAUNCH_TAGS),
            step=counter(1),
            plan_overflow=counter(1),
            verify_entries=counter(len(GROUP_INDEX)),
        )
