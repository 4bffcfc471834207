"""``build_engine``: the engine class a config asks for (speculative, disaggregated or plain)."""

from __future__ import annotations

from kv_canary import CanaryConfig
from mock_models.config import EngineConfig
from mock_models.engine.disaggregation import DisaggregatedEngine
from mock_models.engine.engine import Engine
from mock_models.engine.speculative import SpeculativeEngine


def build_engine(config: EngineConfig, *, canary_config: CanaryConfig | None = None) -> Engine:
    if config.disaggregation != "none":
        return DisaggregatedEngine(config, canary_config=canary_config)
    if config.speculative_num_steps:
        return SpeculativeEngine(config, canary_config=canary_config)
    return Engine(config, canary_config=canary_config)
