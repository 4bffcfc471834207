"""mode ``swa``: four layers, full and sliding-window alternating (SWAKVPool).

Full layers live in the full sub-pool; window layers in the smaller SWA sub-pool, reached
through ``full_to_swa_index_mapping``. A window layer's query at position p reads positions
``[p - swa_window, p]``, so a forward with prefix P reads ``[P - swa_window, P)`` from the cache.
"""

from __future__ import annotations

from mock_models.config import EngineConfig
from mock_models.models.spec import LayerKind, ModelSpec


def swa_spec(config: EngineConfig) -> ModelSpec:
    return ModelSpec(
        vocab_size=config.vocab_size,
        seed=config.seed,
        swa_window=config.swa_window,
        layer_kinds=(LayerKind.FULL, LayerKind.WINDOW, LayerKind.FULL, LayerKind.WINDOW),
    )
