"""Hybrid SWA pools: a full sub-pool and an SWA sub-pool reached through the full-to-SWA map."""

from __future__ import annotations

from kv_canary.adapters.buffer_info import report_canary_buffers
from kv_canary.adapters.group_builder import build_group
from kv_canary.buffer_group import CanaryBufferGroup
from kv_canary.config import CanaryConfig
from kv_canary.launch_tags import PoolGroupKind


def require_window(pool: object, swa_window: int | None) -> int:
    if swa_window is None or swa_window < 1:
        raise ValueError(f"kv_canary: {type(pool).__name__} has a sliding-window sub-pool; pass "
                         "install_canary(swa_window=...) with the model's window in tokens")
    return swa_window


def attach_swa(pool: object, *, config: CanaryConfig, swa_window: int | None) -> tuple[CanaryBufferGroup, ...]:
    window = require_window(pool, swa_window)
    full, swa = pool.full_kv_pool, pool.swa_kv_pool
    full_group = build_group(kind=PoolGroupKind.FULL, k_buffers=full.k_buffer, v_buffers=full.v_buffer,
                             config=config)
    swa_group = build_group(kind=PoolGroupKind.SWA, k_buffers=swa.k_buffer, v_buffers=swa.v_buffer, config=config,
                            full_to_swa_index_mapping=pool.full_to_swa_index_mapping, window=window)
    page_size = getattr(pool, "page_size", 1)
    report_canary_buffers(pool, "get_contiguous_buf_infos", full_group, page_size)
    report_canary_buffers(pool, "get_state_buf_infos", swa_group, page_size)
    return (full_group, swa_group)
