"""Hybrid SWA pools: a full sub-pool and an SWA sub-pool reached through the full-to-SWA map.

A sub-pool without layers gets no group: SGLang builds an all-sliding-window model's pool with
an empty full sub-pool (its full-pool slots only index the map).
"""

from __future__ import annotations

import torch

from kv_canary.adapters.buffer_info import BufferListLayout, report_canary_buffers
from kv_canary.adapters.group_builder import build_group
from kv_canary.adapters.pool_layers import read_pool_layers
from kv_canary.buffer_group import CanaryBufferGroup
from kv_canary.config import CanaryConfig
from kv_canary.engine_protocols import DeepSeekV4KvPool, HybridSwaKvPool
from kv_canary.errors import PoolLayoutError
from kv_canary.launch_tags import PoolGroupKind


def require_window(pool: object, swa_window: int | None) -> int:
    if swa_window is None or swa_window < 1:
        raise PoolLayoutError(
            f"kv_canary: {type(pool).__name__} has a sliding-window sub-pool; pass "
            "install_canary(swa_window=...) with the model's window in tokens"
        )
    return swa_window


def require_mapping(pool: HybridSwaKvPool | DeepSeekV4KvPool) -> torch.Tensor:
    mapping: torch.Tensor | None = getattr(pool, "full_to_swa_index_mapping", None)  # None until registered
    if mapping is None:
        raise PoolLayoutError(
            f"kv_canary: {type(pool).__name__}.full_to_swa_index_mapping is not set yet; the SWA "
            "allocator registers it (SGLang: SWATokenToKVPoolAllocator calls register_mapping), so "
            "install the canary after the allocator exists"
        )
    return mapping


def attach_swa(pool: HybridSwaKvPool, *, config: CanaryConfig, swa_window: int | None) -> tuple[CanaryBufferGroup, ...]:
    window = require_window(pool, swa_window)
    mapping = require_mapping(pool)
    full = read_pool_layers(pool.full_kv_pool, what="the full sub-pool")
    swa = read_pool_layers(pool.swa_kv_pool, what="the SWA sub-pool")
    page_size = getattr(pool, "page_size", 1)
    groups = []
    if full.k_buffers:
        full_group = build_group(kind=PoolGroupKind.FULL, layers=full, config=config)
        # SWAKVPool lists the full sub-pool's K then V buffers here, the SWA sub-pool's in
        # get_state_buf_infos (SGLang ships those as its SWA state component).
        report_canary_buffers(
            pool, "get_contiguous_buf_infos", full_group, page_size=page_size, layout=BufferListLayout.K_THEN_V
        )
        groups.append(full_group)
    if swa.k_buffers:
        swa_group = build_group(
            kind=PoolGroupKind.SWA, layers=swa, config=config, full_to_swa_index_mapping=mapping, window=window
        )
        report_canary_buffers(
            pool, "get_state_buf_infos", swa_group, page_size=page_size, layout=BufferListLayout.K_THEN_V
        )
        groups.append(swa_group)
    if not groups:
        raise PoolLayoutError(f"kv_canary: {type(pool).__name__} has no layers in either sub-pool to guard")
    return tuple(groups)
