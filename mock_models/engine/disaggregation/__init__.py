"""Prefill-decode disaggregation in the mock engine (``EngineConfig.disaggregation``)."""

from mock_models.engine.disaggregation.engine import DisaggregatedEngine, TransferFault
from mock_models.engine.disaggregation.transfer import KvTransfer, TransferPlan

__all__ = ["DisaggregatedEngine", "KvTransfer", "TransferFault", "TransferPlan"]
