"""Log a ``kv_canary_stats`` line every ``stats_interval`` forwards, from counters read one step late."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from kv_canary.log_lines import CanaryStatsLog
from kv_canary.observers.delayed_transfer import DeviceSnapshot

if TYPE_CHECKING:
    from kv_canary.manager import CanaryManager


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _StatsContext:
    """Host values taken at the step the device counters were staged, so the line describes one instant."""

    step: int
    sweep_passes: int
    violations_repeated: int


class StatsLogger:
    def __init__(self, *, manager: CanaryManager, sweep_passes: Callable[[], int]) -> None:
        if manager.config.stats_interval < 1:
            raise ValueError("StatsLogger needs stats_interval >= 1 (0 means: do not build one)")
        self._manager = manager
        self._interval = manager.config.stats_interval
        self._sweep_passes = sweep_passes
        self._handler = manager.new_delayed_handler()

    def step(self, forward_count: int) -> None:
        self._handler.step(
            compute_on_device=functools.partial(self._compute_on_device, forward_count),
            postprocess_on_host=self._postprocess_on_host,
        )

    def flush(self) -> None:
        self._handler.flush(self._postprocess_on_host)

    def _compute_on_device(self, forward_count: int) -> tuple[DeviceSnapshot, _StatsContext] | None:
        if forward_count % self._interval:
            return None
        state = self._manager.state
        snapshot = {
            "kernel_runs": state.kernel_run_counters,
            "slot_runs": state.slot_run_counters,
            "violations": state.ring.write_index,
        }
        context = _StatsContext(
            step=forward_count,
            sweep_passes=self._sweep_passes(),
            violations_repeated=self._manager.reporter.repeats_suppressed,
        )
        return snapshot, context

    def _postprocess_on_host(self, snapshot: DeviceSnapshot, context: _StatsContext) -> None:
        kernel_runs = snapshot["kernel_runs"].tolist()
        expected = self._manager.active_launch_tags
        line = CanaryStatsLog(
            step=context.step,
            protected_tokens=int(snapshot["slot_runs"].sum()),
            sweep_passes=context.sweep_passes,
            violations=int(snapshot["violations"][0]),
            launch_tags_active=sum(1 for tag in expected if kernel_runs[tag] > 0),
            launch_tags_expected=len(expected),
            violations_repeated=context.violations_repeated,
        )
        self._manager.logger.info("%s", line.format())
