"""mode ``mha``: two full-attention layers over one MHATokenToKVPool."""

from __future__ import annotations

from mock_models.config import EngineConfig
from mock_models.models.spec import LayerKind, ModelSpec


def mha_spec(config: EngineConfig) -> ModelSpec:
    return ModelSpec(vocab_size=config.vocab_size, seed=config.seed, layer_kinds=(LayerKind.FULL,) * 2)
