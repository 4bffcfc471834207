"""A host KV tier for the mock engine's radix cache (``EngineConfig.host_tier_tokens``)."""

from mock_models.engine.host_tier.tiered_radix_cache import HostNode, HostTieredRadixCache, Restore

__all__ = ["HostNode", "HostTieredRadixCache", "Restore"]
