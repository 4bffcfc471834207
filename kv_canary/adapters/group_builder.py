"""Allocate a pool group's canary records beside its per-layer K/V buffers."""

from __future__ import annotations

import torch

from kv_canary.adapters.pool_layers import PoolLayers
from kv_canary.buffer_group import CanaryBufferGroup, HalfBuffers
from kv_canary.config import CanaryConfig, RealKvHashMode
from kv_canary.errors import PoolLayoutError
from kv_canary.launch_tags import KvHalf, PoolGroupKind
from kv_canary.real_kv import RealKvSource


def build_group(
    *,
    kind: PoolGroupKind,
    layers: PoolLayers,
    config: CanaryConfig,
    full_to_swa_index_mapping: torch.Tensor | None = None,
    window: int | None = None,
) -> CanaryBufferGroup:
    """One record pair per slot and guarded K/V half (K only when ``layers.v_buffers`` is None)."""
    if not layers.k_buffers:
        raise PoolLayoutError(f"kv_canary: the {kind.value} pool group has no K layers to guard")
    _require_slot_rows_for_real_kv(kind, layers, config)
    device = layers.k_buffers[0].device
    halves = {
        KvHalf.K: HalfBuffers.allocate(
            num_slots=layers.num_slots,
            device=device,
            real_kv=RealKvSource.from_layer_buffers(layers.k_buffers, config.real_kv_hash),
        )
    }
    if layers.v_buffers:
        halves[KvHalf.V] = HalfBuffers.allocate(
            num_slots=layers.num_slots,
            device=device,
            real_kv=RealKvSource.from_layer_buffers(layers.v_buffers, config.real_kv_hash),
        )
    return CanaryBufferGroup(
        kind=kind,
        num_slots=layers.num_slots,
        halves=halves,
        full_to_swa_index_mapping=full_to_swa_index_mapping,
        window=window,
    )


def _require_slot_rows_for_real_kv(kind: PoolGroupKind, layers: PoolLayers, config: CanaryConfig) -> None:
    if config.real_kv_hash is RealKvHashMode.NONE:
        return
    buffers = layers.k_buffers + (layers.v_buffers or [])
    rows = sorted({buffer.shape[0] for buffer in buffers})
    if rows != [layers.num_slots]:
        raise PoolLayoutError(
            f"kv_canary: the {kind.value} pool group has {layers.num_slots} slots but its K/V buffers lead with "
            f"{rows} rows (a page-major layout), so a slot's bytes are not one row and cannot be hashed in place; "
            "set real_kv_hash=none (KV_CANARY_REAL_KV_HASH=none) or use a slot-major (NHD) KV layout"
        )
