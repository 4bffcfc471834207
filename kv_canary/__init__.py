"""kv_canary: per-slot canary records that catch silent KV-cache corruption at run time."""

from kv_canary.config import CanaryConfig, CanaryMode, KernelBackend, RealKvHashMode
from kv_canary.install import install_canary
from kv_canary.log_lines import CanaryStatsLog, SwaDivergenceLog, ViolationRecord
from kv_canary.manager import CanaryManager
from kv_canary.observers.violation_reporter import KvCanaryViolationError

__all__ = [
    "CanaryConfig",
    "CanaryManager",
    "CanaryMode",
    "CanaryStatsLog",
    "KernelBackend",
    "KvCanaryViolationError",
    "RealKvHashMode",
    "SwaDivergenceLog",
    "ViolationRecord",
    "install_canary",
]
