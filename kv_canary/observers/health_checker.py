"""Check that every launch tag's verify kernel keeps running, so a silently unwired canary is loud.

A canary that stopped launching its kernels (a forward path that bypasses the installed wrapper,
a CUDA graph captured without the pre/post-ops, a sweep that no longer runs) reports nothing,
which looks exactly like a healthy engine. After ``health_check_warmup`` forwards, and then every
``health_check_interval`` forwards, the checker snapshots the per-tag kernel-run counters (read
on the host one step later, like every observer) and requires each expected tag's counter to
have advanced since the previous check point.

Which tags are expected over a window of forwards ``(previous check point, this check point]``:

* every HEAD and TAIL tag of every guarded group and K/V half: they launch on every forward,
  even an empty one;
* the SWEEP tags only when the sweep is on (``sweep_interval`` > 0), a prefix cache was already
  attached at the previous check point, and the window contains a forward count that is a
  multiple of ``sweep_interval``, i.e. a forward at which the sweep orchestrator must have run.
  Shorter windows, and windows before ``manager.attach_prefix_cache``, do not judge them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

from kv_canary.errors import KvCanaryHealthError
from kv_canary.launch_tags import LaunchTag, Phase
from kv_canary.observers.delayed_transfer import DeviceSnapshot

if TYPE_CHECKING:
    from kv_canary.manager import CanaryManager


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _CheckPoint:
    forward_count: int
    prefix_cache_attached: bool


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _Observed:
    check_point: _CheckPoint
    kernel_runs: tuple[int, ...]  # indexed by LaunchTag


class HealthChecker:
    def __init__(self, *, manager: CanaryManager) -> None:
        config = manager.config
        if config.health_check_interval < 1:
            raise ValueError("HealthChecker needs health_check_interval >= 1 (0 means: do not build one)")
        self._manager = manager
        self._interval = config.health_check_interval
        self._warmup = config.health_check_warmup
        self._sweep_interval = config.sweep_interval
        self._handler = manager.new_delayed_handler()
        self._previous: _Observed | None = None
        self.checks_passed = 0

    def step(self, forward_count: int) -> None:
        self._handler.step(
            compute_on_device=functools.partial(self._compute_on_device, forward_count),
            postprocess_on_host=self._postprocess_on_host,
        )

    def flush(self) -> None:
        self._handler.flush(self._postprocess_on_host)

    def _is_check_point(self, forward_count: int) -> bool:
        return forward_count >= self._warmup and (forward_count - self._warmup) % self._interval == 0

    def _compute_on_device(self, forward_count: int) -> tuple[DeviceSnapshot, _CheckPoint] | None:
        if not self._is_check_point(forward_count):
            return None
        check_point = _CheckPoint(
            forward_count=forward_count, prefix_cache_attached=self._manager.prefix_cache is not None
        )
        return {"kernel_runs": self._manager.state.kernel_run_counters}, check_point

    def _postprocess_on_host(self, snapshot: DeviceSnapshot, check_point: _CheckPoint) -> None:
        observed = _Observed(check_point=check_point, kernel_runs=tuple(snapshot["kernel_runs"].tolist()))
        previous, self._previous = self._previous, observed
        if previous is None:
            return  # the first check point is the baseline
        expected = self._expected_tags(previous.check_point, check_point)
        stalled = tuple(tag.name for tag in expected if observed.kernel_runs[tag] <= previous.kernel_runs[tag])
        if stalled:
            message = _stalled_message(stalled, previous.check_point.forward_count, check_point.forward_count)
            self._manager.logger.error("%s", message)
            raise KvCanaryHealthError(message, stalled)
        self.checks_passed += 1

    def _expected_tags(self, previous: _CheckPoint, current: _CheckPoint) -> tuple[LaunchTag, ...]:
        judge_sweep = (
            self._sweep_interval > 0
            and previous.prefix_cache_attached
            and current.forward_count // self._sweep_interval > previous.forward_count // self._sweep_interval
        )
        return tuple(tag for tag in self._manager.active_launch_tags if tag.phase is not Phase.SWEEP or judge_sweep)


def _stalled_message(stalled: tuple[str, ...], since: int, now: int) -> str:
    return (
        f"kv_canary health check failed at forward {now}: the verify kernels of launch tag(s) "
        f"{', '.join(stalled)} did not run in forwards {since + 1}..{now}. That part of the canary is "
        "silently unwired and would miss corruption: check that every forward path goes through the "
        "model wrapped by install_canary (CUDA graphs must be captured after install), and for SWEEP_* "
        "tags that the radix sweep still runs (manager.attach_prefix_cache, KV_CANARY_SWEEP_INTERVAL)."
    )
