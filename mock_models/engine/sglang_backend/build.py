"""``build_sglang_memory``: the engine's memory on SGLang's real classes."""

from __future__ import annotations

from typing import Any

from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator
from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
from sglang.srt.mem_cache.radix_cache import RadixCache
from sglang.srt.mem_cache.unified_cache.components import ComponentType
from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.memory_protocols import EngineMemory
from mock_models.engine.sglang_backend.allocators import SglangFullAllocator, SglangSwaAllocator
from mock_models.engine.sglang_backend.pools import SglangMHAPool, SglangSWAKVPool
from mock_models.engine.sglang_backend.radix_cache import SglangRadixCache
from mock_models.engine.sglang_backend.request_rows import SglangReqToTokenPool
from mock_models.models.spec import LayerKind, ModelSpec


def build_sglang_memory(config: EngineConfig, spec: ModelSpec) -> EngineMemory:
    """``EngineConfig`` has checked the mode (mha or swa)."""
    device = str(config.device)
    requests = SglangReqToTokenPool(
        ReqToTokenPool(
            size=config.max_running_requests,
            max_context_len=config.max_context_len,
            device=device,
            enable_memory_saver=False,
        )
    )
    common: dict[str, Any] = {
        "size": config.max_total_tokens,
        "page_size": config.page_size,
        "dtype": config.torch_kv_dtype,
        "head_num": spec.num_heads,
        "head_dim": spec.head_dim,
        "device": device,
    }
    if config.model_mode is ModelMode.MHA:
        pool = SglangMHAPool(layer_num=spec.num_layers, enable_memory_saver=False, **common)
        allocator: TokenToKVPoolAllocator | PagedTokenToKVPoolAllocator
        if config.page_size == 1:
            allocator = TokenToKVPoolAllocator(
                config.max_total_tokens, config.torch_kv_dtype, device, pool, need_sort=False
            )
        else:
            allocator = PagedTokenToKVPoolAllocator(
                config.max_total_tokens, config.page_size, config.torch_kv_dtype, device, pool, need_sort=False
            )
        tree = RadixCache(_cache_params(requests, allocator, config, window=None))
        return EngineMemory(
            req_to_token_pool=requests,
            token_to_kv_pool=pool,
            full_allocator=SglangFullAllocator(allocator, full_pool=allocator, free=allocator.free),
            swa_allocator=None,
            radix_cache=SglangRadixCache(tree, allocator),
        )
    swa_pool = SglangSWAKVPool(
        size_swa=config.swa_pool_size,
        full_attention_layer_ids=spec.layer_ids(LayerKind.FULL),
        swa_attention_layer_ids=spec.layer_ids(LayerKind.WINDOW),
        **common,
    )
    # Its paged form (page_size > 1) pages the SWA pool in step with the full pool.
    swa_allocator = SWATokenToKVPoolAllocator(
        config.max_total_tokens,
        config.swa_pool_size,
        config.page_size,
        config.torch_kv_dtype,
        device,
        swa_pool,
        need_sort=False,
    )
    params = _cache_params(requests, swa_allocator, config, window=config.swa_window)
    params.tree_components = (ComponentType.FULL, ComponentType.SWA)
    # SGLang's Python tree core (its default is Rust): its nodes are Python objects, which the
    # fault injector picks from and the canary's sweep reads tokens from.
    params.tree_core_backend = "python"
    unified_tree = UnifiedRadixCache(params)
    return EngineMemory(
        req_to_token_pool=requests,
        token_to_kv_pool=swa_pool,
        full_allocator=SglangFullAllocator(
            swa_allocator, full_pool=swa_allocator.full_attn_allocator, free=swa_allocator.free_full
        ),
        swa_allocator=SglangSwaAllocator(swa_allocator),
        radix_cache=SglangRadixCache(unified_tree, swa_allocator),
    )


def _cache_params(
    requests: SglangReqToTokenPool, allocator: Any, config: EngineConfig, *, window: int | None
) -> CacheInitParams:
    return CacheInitParams(
        disable=False,
        req_to_token_pool=requests.sglang_pool,
        token_to_kv_pool_allocator=allocator,
        page_size=config.page_size,
        sliding_window_size=window,
    )
