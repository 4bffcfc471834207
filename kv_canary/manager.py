"""Per-forward orchestration: HEAD/TAIL verify and write through the selected kernels, then the observers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import torch

from kv_canary.buffer_group import CanaryBufferGroup
from kv_canary.config import CanaryConfig
from kv_canary.device_state import CanaryDeviceState
from kv_canary.engine_protocols import PrefixCache, ReqToTokenRows
from kv_canary.forward_rows import ForwardRows
from kv_canary.kernels.select import select_kernels
from kv_canary.kernels.settings import KernelSettings
from kv_canary.launch_tags import LaunchTag, Phase, PoolGroupKind
from kv_canary.log_lines import ViolationRecord
from kv_canary.observers.delayed_transfer import DelayedDeviceHostHandler, new_stream
from kv_canary.observers.violation_reporter import ViolationReporter


class HostObserver(Protocol):
    def step(self, forward_count: int) -> None: ...

    def flush(self) -> None: ...


class CanaryManager:
    def __init__(
        self,
        *,
        config: CanaryConfig,
        groups: tuple[CanaryBufferGroup, ...],
        device: torch.device,
        logger: logging.Logger,
        req_to_token_pool: ReqToTokenRows | None = None,
        rank: int | None = None,
    ) -> None:
        self.config = config
        self.rank = rank
        self.groups = groups
        self.req_to_token_pool = req_to_token_pool
        self.device = device
        self.logger = logger
        self.state = CanaryDeviceState.allocate(ring_capacity=config.ring_capacity, device=device)
        self.kernels = select_kernels(
            config.backend,
            groups=groups,
            state=self.state,
            settings=KernelSettings.from_config(config),
            device=device,
            logger=logger,
        )
        self.side_stream = new_stream(device) if device.type == "cuda" else None
        self.reporter = ViolationReporter(
            state=self.state,
            mode=config.mode,
            logger=logger,
            handler=self.new_delayed_handler(),
            repeat_interval=config.violation_repeat_interval,
            rank=rank,
        )
        self.observers: list[HostObserver] = []
        self.prefix_cache: PrefixCache | None = None
        self.forward_count = 0
        # The rows of the forward in flight (between before_forward and after_forward), then of the
        # last one: under graph capture, the static tensors the replays refill.
        self.latest_rows: ForwardRows | None = None

    # --- wiring -----------------------------------------------------------------------------

    def new_delayed_handler(self) -> DelayedDeviceHostHandler:
        return DelayedDeviceHostHandler(self.device, self.side_stream)

    def attach_prefix_cache(self, prefix_cache: PrefixCache) -> None:
        """The radix cache the periodic sweep walks; engines call this once it exists."""
        self.prefix_cache = prefix_cache

    @property
    def active_launch_tags(self) -> tuple[LaunchTag, ...]:
        """Tags whose verify kernels this install launches (sweep tags only with the sweep on)."""
        phases = (Phase.HEAD, Phase.TAIL) + ((Phase.SWEEP,) if self.config.sweep_interval else ())
        return tuple(tag for group in self.groups for tag in group.launch_tags(phases))

    def group(self, kind: PoolGroupKind) -> CanaryBufferGroup | None:
        return next((group for group in self.groups if group.kind is kind), None)

    # --- per forward --------------------------------------------------------------------------

    def before_forward(self, rows: ForwardRows) -> None:
        """Pre-ops, capturable: advance the step, write then verify the HEAD records."""
        self.latest_rows = rows
        kernels = self.kernels
        kernels.forward.before_forward(rows, verify=kernels.verify, write=kernels.write)

    def after_forward(self) -> None:
        """Post-ops, capturable: verify and write the TAIL records, hashing the real K/V just written."""
        if self.latest_rows is None:
            raise RuntimeError("kv_canary: after_forward() without a before_forward() for this forward")
        kernels = self.kernels
        kernels.forward.after_forward(self.latest_rows, verify=kernels.verify, write=kernels.write)

    def restart_step_count(self) -> None:
        """Count forwards from zero again, between forwards: a server calls it once it starts serving,
        so that its start-up forwards (warm-up, CUDA-graph capture) do not shift the steps it logs."""
        self.state.step.zero_()
        self.forward_count = 0

    def after_forward_on_host(self) -> None:
        """Host-side observers; never inside a captured graph."""
        self.forward_count += 1
        forward_count = self.forward_count
        _run_every_observer(self.observers, lambda observer: observer.step(forward_count))

    # --- between forwards ------------------------------------------------------------------------

    def flush(self) -> None:
        """Deliver everything staged on the device now (blocking); call between forwards only."""
        _run_every_observer(self.observers, lambda observer: observer.flush())

    @property
    def violations(self) -> list[ViolationRecord]:
        return list(self.reporter.records)

    def stats_snapshot(self) -> dict[str, object]:
        """A blocking read of the counters, for HTTP endpoints and tests; not for the forward path."""
        kernel_runs = self.state.kernel_run_counters.tolist()
        slot_runs = self.state.slot_run_counters.tolist()
        return {
            "forward_count": self.forward_count,
            "violations_reported": len(self.reporter.records),
            "violations_total": int(self.state.ring.write_index.item()),
            "ring_rows_dropped": self.reporter.dropped_rows,
            "violations_repeated": self.reporter.repeats_suppressed,
            "plan_overflow_entries": int(self.state.plan_overflow.item()),
            "kernel_runs": {tag.name: kernel_runs[tag] for tag in self.active_launch_tags},
            "slots_verified": {tag.name: slot_runs[tag] for tag in self.active_launch_tags},
            "kernel_backend": self.kernels.name,
        }


def _run_every_observer(observers: list[HostObserver], call: Callable[[HostObserver], None]) -> None:
    """Call every observer, then raise the first error one raised.

    An error is how an observer reports (mode raise: the violation reporter; a stalled kernel: the
    health checker), and each logs before it raises; the observers after it must still run, or a
    violation in mode raise would silently skip that forward's stats line and health check.
    """
    first_error: Exception | None = None
    for observer in observers:
        try:
            call(observer)
        except Exception as error:
            first_error = first_error or error
    if first_error is not None:
        raise first_error
