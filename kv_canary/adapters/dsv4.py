"""DeepSeek-V4-style pools: the SWA sub-pool's K half is guarded.

Left unguarded, and said so in the README: the compressed pools (their entries summarise
several tokens, so there is no per-slot token/position record to chain) and any V half (the
SWA sub-pool stores a single latent per slot).

SGLang's ``DeepSeekV4TokenToKVPool`` keeps the SWA latents in ``swa_kv_pool.kv_buffer``, padded
FlashMLA pages (page-major, so only ``real_kv_hash=none`` applies); the mock engine's pool names
them ``k_buffer``, one row per slot. Modes that keep SWA state per request instead of in a
token-indexed sub-pool (``swa_kv_pool`` is None) are not supported.
"""

from __future__ import annotations

from kv_canary.adapters.buffer_info import BufferListLayout, report_canary_buffers
from kv_canary.adapters.group_builder import build_group
from kv_canary.adapters.pool_layers import read_pool_layers
from kv_canary.adapters.swa import require_mapping, require_window
from kv_canary.buffer_group import CanaryBufferGroup
from kv_canary.config import CanaryConfig
from kv_canary.engine_protocols import DeepSeekV4KvPool
from kv_canary.errors import PoolLayoutError
from kv_canary.launch_tags import PoolGroupKind


def attach_dsv4(
    pool: DeepSeekV4KvPool, *, config: CanaryConfig, swa_window: int | None
) -> tuple[CanaryBufferGroup, ...]:
    window = require_window(pool, swa_window)
    swa_kv_pool = getattr(pool, "swa_kv_pool", None)
    if swa_kv_pool is None:
        raise PoolLayoutError(
            f"kv_canary: {type(pool).__name__} keeps its sliding-window KV per request (no "
            "token-indexed swa_kv_pool); only the paged SWA sub-pool is supported"
        )
    layers = read_pool_layers(swa_kv_pool, what="the SWA sub-pool", k_names=("k_buffer", "kv_buffer"), v_name=None)
    group = build_group(
        kind=PoolGroupKind.SWA,
        layers=layers,
        config=config,
        full_to_swa_index_mapping=require_mapping(pool),
        window=window,
    )
    # SGLang's DeepSeek-V4 state list is flat (the SWA latent layers, then the compression
    # states), addressed by SWA page: one item per swa_page_size slots.
    report_canary_buffers(
        pool,
        "get_state_buf_infos",
        group,
        page_size=getattr(pool, "swa_page_size", getattr(pool, "page_size", 1)),
        layout=BufferListLayout.FLAT,
    )
    return (group,)
