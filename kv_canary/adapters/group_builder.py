"""Allocate a pool group's canary records beside its per-layer K/V buffers."""

from __future__ import annotations

import torch

from kv_canary.buffer_group import CanaryBufferGroup, HalfBuffers
from kv_canary.config import CanaryConfig
from kv_canary.launch_tags import KvHalf, PoolGroupKind
from kv_canary.real_kv import RealKvSource


def build_group(*, kind: PoolGroupKind, k_buffers: list[torch.Tensor], v_buffers: list[torch.Tensor] | None,
                config: CanaryConfig, full_to_swa_index_mapping: torch.Tensor | None = None,
                window: int | None = None) -> CanaryBufferGroup:
    if not k_buffers:
        raise ValueError(f"kv_canary: the {kind.value} pool group has no K layers to guard")
    num_slots = k_buffers[0].shape[0]
    device = k_buffers[0].device
    halves = {KvHalf.K: HalfBuffers.allocate(
        num_slots=num_slots, device=device, real_kv=RealKvSource.from_layer_buffers(k_buffers, config.real_kv_hash))}
    if v_buffers:
        halves[KvHalf.V] = HalfBuffers.allocate(
            num_slots=num_slots, device=device, real_kv=RealKvSource.from_layer_buffers(v_buffers, config.real_kv_hash))
    return CanaryBufferGroup(kind=kind, num_slots=num_slots, halves=halves,
                             full_to_swa_index_mapping=full_to_swa_index_mapping, window=window)
