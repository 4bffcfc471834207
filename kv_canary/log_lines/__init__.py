"""Frozen log-line formats, each produced and parsed by the class that owns it."""

from kv_canary.log_lines.stats_log import CanaryStatsLog
from kv_canary.log_lines.swa_divergence_log import SwaDivergenceLog
from kv_canary.log_lines.violation_record import ViolationRecord
from kv_canary.log_lines.violation_repeats_log import RepeatedViolation, ViolationRepeatsLog

__all__ = ["CanaryStatsLog", "RepeatedViolation", "SwaDivergenceLog", "ViolationRecord", "ViolationRepeatsLog"]
