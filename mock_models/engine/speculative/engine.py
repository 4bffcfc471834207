"""The engine with speculative decoding: its scheduler drafts and verifies, its KV cache rolls back."""

from __future__ import annotations

from mock_models.engine.engine import Engine
from mock_models.engine.speculative.kv_cache import SpeculativeKVCacheManager
from mock_models.engine.speculative.scheduler import SpeculativeScheduler


class SpeculativeEngine(Engine):
    features = Engine.features | {"speculative_num_steps"}
    kv_cache_class = SpeculativeKVCacheManager
    scheduler_class = SpeculativeScheduler
