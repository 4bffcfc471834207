"""The engine's memory (request rows, KV pool, slot allocators, radix cache), by ``mem_backend``.

``mock``: the engine's own classes. ``sglang``: SGLang 0.5.23's real classes behind the same
interfaces (``sglang_backend/``; needs .ci/install-sglang). The rest of the engine only sees the
five objects returned here, through the types of ``memory_protocols.py``.
"""

from __future__ import annotations

from typing import Any

import torch

from mock_models.config import EngineConfig, MemBackend, ModelMode
from mock_models.engine.allocator import PagedTokenAllocator
from mock_models.engine.bugs import EngineBugs
from mock_models.engine.kv_pools import DeepSeekV4TokenToKVPool, MHATokenToKVPool, SWAKVPool
from mock_models.engine.memory_protocols import EngineMemory
from mock_models.engine.radix_cache import RadixCache
from mock_models.engine.req_to_token_pool import ReqToTokenPool
from mock_models.engine.swa_allocator import SWATokenAllocator
from mock_models.models.spec import LayerKind, ModelSpec


def build_memory(config: EngineConfig, spec: ModelSpec) -> EngineMemory:
    if config.mem_backend is MemBackend.SGLANG:
        return _build_sglang_memory(config, spec)
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
        assert isinstance(pool, SWAKVPool | DeepSeekV4TokenToKVPool)  # the modes with an SWA pool
        pool.register_mapping(swa_allocator.full_to_swa_index_mapping)
    radix_cache = RadixCache(
        page_size=config.page_size,
        device=config.device,
        full_allocator=full_allocator,
        swa_allocator=swa_allocator,
        swa_window=config.swa_window if config.has_swa_pool else None,
        bugs=EngineBugs(config.bugs),
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


def _build_sglang_memory(config: EngineConfig, spec: ModelSpec) -> EngineMemory:
    # SGLang is an optional dependency, imported only when this backend is asked for; beside a CPU
    # build of torch its imports need torchvision stubbed first (torchvision_stub.py).
    from mock_models.engine.sglang_backend.torchvision_stub import install_if_missing

    install_if_missing()
    from mock_models.engine.sglang_backend.build import build_sglang_memory

    return build_sglang_memory(config, spec)


def build_kv_pool(config: EngineConfig, spec: ModelSpec) -> MHATokenToKVPool | SWAKVPool | DeepSeekV4TokenToKVPool:
    common: dict[str, Any] = {
        "size": config.max_total_tokens,
        "page_size": config.page_size,
        "dtype": config.torch_kv_dtype,
        "device": config.device,
    }
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
