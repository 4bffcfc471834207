"""SGLang's KV pools, taking the engine's ``set_kv_buffer(layer_id, loc, k, v)``."""

from __future__ import annotations

import types

import torch
from sglang.srt.mem_cache.memory_pool import KVWriteLoc, MHATokenToKVPool
from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool


def _layer(layer_id: int) -> types.SimpleNamespace:
    """What SGLang's ``set_kv_buffer`` reads from its ``RadixAttention`` layer argument."""
    return types.SimpleNamespace(layer_id=layer_id)


class SglangMHAPool(MHATokenToKVPool):
    """SGLang's pool; ``set_kv_buffer`` takes the engine's ``(layer_id, loc, k, v)``."""

    def set_kv_buffer(self, layer_id: int, loc: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor) -> None:
        super().set_kv_buffer(_layer(layer_id), loc, cache_k, cache_v)


class SglangSWAKVPool(SWAKVPool):
    """SGLang's hybrid pool; the engine passes full-pool slots, translated here as SGLang's backends do."""

    def set_kv_buffer(self, layer_id: int, loc: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor) -> None:
        write_loc = KVWriteLoc(loc, swa_loc=self.translate_loc_from_full_to_swa(loc))
        super().set_kv_buffer(_layer(layer_id), write_loc, cache_k, cache_v)
