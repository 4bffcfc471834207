"""The engine's memory (request rows, KV pool, slot allocators, radix cache), by ``mem_backend``.

``mock``: the engine's own classes. ``sglang``: SGLang 0.5.23's real classes behind the same
interfaces (``sglang_memory.py``; needs .ci/install-sglang). The rest of the engine only sees the
five objects returned here.
"""

from __future__ import annotations

import dataclasses

import torch

from mock_models.config import EngineConfig, MemBackend, ModelMode
from mock_models.engine.allocator import PagedTokenAllocator
from mock_models.engine.kv_pools import DeepSeekV4TokenToKVPool, MHATokenToKVPool, SWAKVPool
from mock_models.engine.radix_cache import RadixCache
from mock_models.engine.req_to_token_pool import ReqToTokenPool
from mock_models.engine.swa_allocator import SWATokenAllocator
from mock_models.models.spec import LayerKind, ModelSpec


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class EngineMemory:
    req_to_token_pool: object
    token_to_kv_pool: object
    full_allocator: object
    swa_allocator: object | None  # swa and dsv4 modes
    radix_cache: object


def build_memory(config: EngineConfig, spec: ModelSpec) -> EngineMemory:
    if config.mem_backend is MemBackend.SGLANG:
        from mock_models.engine.sglang_memory import build_sglang_memory  # imports SGLang: only when asked for

        return build_sglang_memory(config, spec)
    device = torch.device(config.device)
    pool = build_kv_pool(config, spec)
    full_allocator = PagedTokenAllocator(
        num_pages=config.num_pages, page_size=config.page_size, strict=config.strict_allocator
    )
    swa_allocator = None
    if config.has_swa_pool:
        swa_allocator = SWATokenAllocator(
            size=config.swa_pool_size,
            page_size=config.page_size,
            full_pool_rows=config.max_total_tokens + config.page_size,
            device=device,
            strict=config.strict_allocator,
        )
        pool.register_mapping(swa_allocator.full_to_swa_index_mapping)
    radix_cache = RadixCache(
        page_size=config.page_size,
        device=config.device,
        full_allocator=full_allocator,
        swa_allocator=swa_allocator,
        swa_window=config.swa_window if config.has_swa_pool else None,
    )
    return EngineMemory(
        req_to_token_pool=ReqToTokenPool(
            size=config.max_running_requests, max_context_len=config.max_context_len, device=device
        ),
        token_to_kv_pool=pool,
        full_allocator=full_allocator,
        swa_allocator=swa_allocator,
        radix_cache=radix_cache,
    )


def build_kv_pool(config: EngineConfig, spec: ModelSpec) -> MHATokenToKVPool | SWAKVPool | DeepSeekV4TokenToKVPool:
    common = dict(
        size=config.max_total_tokens, page_size=config.page_size, dtype=config.torch_kv_dtype, device=config.device
    )
    if config.model_mode is ModelMode.MHA:
        return MHATokenToKVPool(head_num=spec.num_heads, head_dim=spec.head_dim, layer_num=spec.num_layers, **common)
    if config.model_mode is ModelMode.SWA:
        return SWAKVPool(
            size_swa=config.swa_pool_size,
            head_num=spec.num_heads,
            head_dim=spec.head_dim,
            full_attention_layer_ids=spec.layer_ids(LayerKind.FULL),
            swa_attention_layer_ids=spec.layer_ids(LayerKind.WINDOW),
            **common,
        )
    return DeepSeekV4TokenToKVPool(
        size_swa=config.swa_pool_size,
        latent_dim=spec.latent_dim,
        layer_num=spec.num_layers,
        compress_ratio=spec.compress_ratio,
        **common,
    )
