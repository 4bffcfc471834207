"""Pool adapters, chosen by the pool's class name along its MRO."""

from __future__ import annotations

from collections.abc import Callable

from kv_canary.adapters.dsv4 import attach_dsv4
from kv_canary.adapters.mha import attach_mha
from kv_canary.adapters.swa import attach_swa
from kv_canary.buffer_group import CanaryBufferGroup
from kv_canary.config import CanaryConfig
from kv_canary.errors import UnsupportedPoolError

PoolAdapter = Callable[..., tuple[CanaryBufferGroup, ...]]

# Keyed by class name, not class, so SGLang's pools and the mock engine's share adapters and
# kv_canary never has to import an engine.
_POOL_ADAPTERS: dict[str, PoolAdapter] = {
    "MHATokenToKVPool": attach_mha,
    "SWAKVPool": attach_swa,
    "DeepSeekV4TokenToKVPool": attach_dsv4,
}


def register_pool_adapter(class_name: str, adapter: PoolAdapter) -> None:
    _POOL_ADAPTERS[class_name] = adapter


def attach_canary_buffers(
    pool: object, *, config: CanaryConfig, swa_window: int | None
) -> tuple[CanaryBufferGroup, ...]:
    for cls in type(pool).__mro__:
        adapter = _POOL_ADAPTERS.get(cls.__name__)
        if adapter is not None:
            return adapter(pool, config=config, swa_window=swa_window)
    raise UnsupportedPoolError(
        f"kv_canary has no adapter for KV pool type {type(pool).__module__}.{type(pool).__qualname__}; "
        f"supported: {', '.join(sorted(_POOL_ADAPTERS))}. Register one with "
        "kv_canary.adapters.register_pool_adapter(class_name, adapter)."
    )
