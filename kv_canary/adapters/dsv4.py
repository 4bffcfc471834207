"""DeepSeek-V4-style pools: the SWA sub-pool's K half is guarded.

Left unguarded, and said so in the README: the compressed pools (their entries summarise
several tokens, so there is no per-slot token/position record to chain) and any V half (the
SWA sub-pool stores a single latent per slot).
"""

from __future__ import annotations

from kv_canary.adapters.buffer_info import report_canary_buffers
from kv_canary.adapters.group_builder import build_group
from kv_canary.adapters.swa import require_window
from kv_canary.buffer_group import CanaryBufferGroup
from kv_canary.config import CanaryConfig
from kv_canary.launch_tags import PoolGroupKind


def attach_dsv4(pool: object, *, config: CanaryConfig, swa_window: int | None) -> tuple[CanaryBufferGroup, ...]:
    window = require_window(pool, swa_window)
    group = build_group(kind=PoolGroupKind.SWA, k_buffers=pool.swa_kv_pool.k_buffer, v_buffers=None, config=config,
                        full_to_swa_index_mapping=pool.full_to_swa_index_mapping, window=window)
    report_canary_buffers(pool, "get_state_buf_infos", group, getattr(pool, "page_size", 1))
    return (group,)
