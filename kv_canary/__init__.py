"""kv_canary: per-slot canary records that catch silent KV-cache corruption at run time."""

from kv_canary.config import CanaryConfig, CanaryMode, KernelBackend, RealKvHashMode
from kv_canary.errors import (
    CanaryConfigError,
    KvCanaryError,
    KvCanaryHealthError,
    KvCanaryViolationError,
    PoolLayoutError,
    UnsupportedForwardModeError,
    UnsupportedPoolError,
)
from kv_canary.install import install_canary
from kv_canary.log_lines import CanaryStatsLog, SwaDivergenceLog, ViolationRecord
from kv_canary.manager import CanaryManager

__all__ = [
    "CanaryConfig",
    "CanaryConfigError",
    "CanaryManager",
    "CanaryMode",
    "CanaryStatsLog",
    "KernelBackend",
    "KvCanaryError",
    "KvCanaryHealthError",
    "KvCanaryViolationError",
    "PoolLayoutError",
    "RealKvHashMode",
    "SwaDivergenceLog",
    "UnsupportedForwardModeError",
    "UnsupportedPoolError",
    "ViolationRecord",
    "install_canary",
]
