"""mode ``dsv4``: two DeepSeek-V4-style layers over a DeepSeekV4TokenToKVPool.

Each layer keeps one K-only latent per token in the SWA sub-pool (read as key and value) for
the window, and one pooled latent per ``compress_ratio`` tokens in the compressed pool for
positions older than the window. There is no V half anywhere.
"""

from __future__ import annotations

from mock_models.config import EngineConfig
from mock_models.models.spec import LayerKind, ModelSpec


def dsv4_spec(config: EngineConfig) -> ModelSpec:
    return ModelSpec(
        vocab_size=config.vocab_size,
        seed=config.seed,
        swa_window=config.swa_window,
        compress_ratio=config.compress_ratio,
        layer_kinds=(LayerKind.COMPRESSED_WINDOW,) * 2,
    )
