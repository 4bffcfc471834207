"""MHA-style pools: one full pool, per-layer ``k_buffer`` and ``v_buffer`` lists."""

from __future__ import annotations

from kv_canary.adapters.buffer_info import BufferListLayout, report_canary_buffers
from kv_canary.adapters.group_builder import build_group
from kv_canary.adapters.pool_layers import read_pool_layers
from kv_canary.buffer_group import CanaryBufferGroup
from kv_canary.config import CanaryConfig
from kv_canary.engine_protocols import KvLayerBuffers
from kv_canary.launch_tags import PoolGroupKind


def attach_mha(pool: KvLayerBuffers, *, config: CanaryConfig, swa_window: int | None) -> tuple[CanaryBufferGroup, ...]:
    del swa_window  # every layer attends to the whole prefix
    group = build_group(kind=PoolGroupKind.FULL, layers=read_pool_layers(pool, what="the KV pool"), config=config)
    report_canary_buffers(
        pool,
        "get_contiguous_buf_infos",
        group,
        page_size=getattr(pool, "page_size", 1),
        layout=BufferListLayout.K_THEN_V,
    )
    return (group,)
