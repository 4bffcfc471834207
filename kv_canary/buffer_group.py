"""A pool group's canary buffers: HEAD and TAIL records per guarded K/V half."""

from __future__ import annotations

import dataclasses

import torch

from kv_canary.launch_tags import KvHalf, LaunchTag, Phase, PoolGroupKind
from kv_canary.real_kv import RealKvSource
from kv_canary.records import allocate_records


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class HalfBuffers:
    head: torch.Tensor  # int64 [num_slots, RECORD_WORDS]
    tail: torch.Tensor
    real_kv: RealKvSource | None  # None when real-KV hashing is off

    @classmethod
    def allocate(cls, *, num_slots: int, device: torch.device | str, real_kv: RealKvSource | None) -> HalfBuffers:
        return cls(head=allocate_records(num_slots, device), tail=allocate_records(num_slots, device), real_kv=real_kv)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CanaryBufferGroup:
    """One pool group (a FULL or SWA sub-pool) and the canary records beside its slots.

    SWA groups carry the full-to-SWA index map: plans are built from full-pool slot indices
    (what ``req_to_token`` holds) and translated through it; 0 means not resident.
    """

    kind: PoolGroupKind
    num_slots: int
    halves: dict[KvHalf, HalfBuffers]  # DSv4-style pools guard K only
    full_to_swa_index_mapping: torch.Tensor | None = None
    window: int | None = None  # SWA groups: tokens of history the attention reads

    def __post_init__(self) -> None:
        if (self.kind is PoolGroupKind.SWA) != (self.full_to_swa_index_mapping is not None):
            raise ValueError("an SWA group needs full_to_swa_index_mapping, and only an SWA group has one")
        if self.kind is PoolGroupKind.SWA and (self.window is None or self.window < 1):
            raise ValueError("an SWA group needs a sliding window of at least 1 token")

    def records(self, phase: Phase, half: KvHalf) -> torch.Tensor:
        buffers = self.halves[half]
        return buffers.head if phase is Phase.HEAD else buffers.tail

    def launch_tag(self, phase: Phase, half: KvHalf) -> LaunchTag:
        return LaunchTag.of(phase, half, self.kind)

    def launch_tags(self, phases: tuple[Phase, ...]) -> tuple[LaunchTag, ...]:
        return tuple(self.launch_tag(phase, half) for phase in phases for half in self.halves)
