"""The host-side observers an install runs after every forward, chosen by the config."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kv_canary.launch_tags import PoolGroupKind
from kv_canary.observers.health_checker import HealthChecker
from kv_canary.observers.stats_logger import StatsLogger
from kv_canary.observers.swa_divergence import SwaDivergenceReporter
from kv_canary.sweep.sweep_orchestrator import SweepOrchestrator

if TYPE_CHECKING:
    from kv_canary.manager import CanaryManager, HostObserver


def build_default_observers(manager: CanaryManager) -> list[HostObserver]:
    """Build the observers the config turns on, in the order they must run.

    The sweep comes first, so that the violation reporter stages the sweep's violations in the
    same forward (they reach the log one forward later, like every other violation) and the
    health checker's and the stats logger's snapshots include that step.
    """
    config = manager.config
    observers: list[HostObserver] = []
    sweep = SweepOrchestrator(manager=manager) if config.sweep_interval else None
    if sweep is not None:
        observers.append(sweep)
    observers.append(manager.reporter)
    if config.health_check_interval:
        observers.append(HealthChecker(manager=manager))
    if config.stats_interval:
        observers.append(StatsLogger(manager=manager, sweep_passes=lambda: sweep.passes if sweep else 0))
    has_both_groups = all(manager.group(kind) is not None for kind in (PoolGroupKind.FULL, PoolGroupKind.SWA))
    if config.swa_divergence_interval and has_both_groups:
        observers.append(SwaDivergenceReporter(manager=manager))
    return observers
