"""Per-forward orchestration: plans, HEAD/TAIL verify and write, then the host-side observers."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Protocol

import torch

from kv_canary.buffer_group import CanaryBufferGroup
from kv_canary.config import CanaryConfig
from kv_canary.device_state import CanaryDeviceState
from kv_canary.engine_protocols import PrefixCache, ReqToTokenRows
from kv_canary.forward_rows import ForwardRows
from kv_canary.kernels.plan_reference import verify_entries_needed
from kv_canary.kernels.select import select_kernels
from kv_canary.launch_tags import LaunchTag, Phase, PoolGroupKind
from kv_canary.log_lines import ViolationRecord
from kv_canary.observers.delayed_transfer import DelayedDeviceHostHandler
from kv_canary.observers.violation_reporter import ViolationReporter
from kv_canary.plans import VerifyPlan, WritePlan


class HostObserver(Protocol):
    def step(self, forward_count: int) -> None: ...

    def flush(self) -> None: ...


class VerifyPlanHook(Protocol):
    """Called inside the pre-ops, possibly while a CUDA graph is captured: device ops only."""

    def on_verify_plan_built(self, group: CanaryBufferGroup, plan: VerifyPlan, rows: ForwardRows) -> None: ...


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class GroupPlans:
    verify: VerifyPlan
    write: WritePlan


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LaunchHints:
    """Host-side sizes of this forward's plans, computed in the pre-ops and reused by the post-ops."""

    verify_entries: int | None  # None: only the device knows, launch over the whole plan
    write_entries: int
    longest_run: int | None


class CanaryManager:
    def __init__(
        self,
        *,
        config: CanaryConfig,
        groups: tuple[CanaryBufferGroup, ...],
        device: torch.device,
        logger: logging.Logger,
        req_to_token_pool: ReqToTokenRows | None = None,
    ) -> None:
        self.config = config
        self.groups = groups
        self.req_to_token_pool = req_to_token_pool
        self.device = device
        self.logger = logger
        self.state = CanaryDeviceState.allocate(ring_capacity=config.ring_capacity, device=device)
        self.kernels = select_kernels(config.backend, device)
        self._plans = tuple(
            GroupPlans(
                verify=VerifyPlan.allocate(config.verify_capacity, device),
                write=self._write_plan(config.write_capacity, config.max_requests_per_forward),
            )
            for _ in groups
        )
        self._hints: tuple[LaunchHints, ...] = ()
        self.side_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.reporter = ViolationReporter(
            state=self.state, mode=config.mode, logger=logger, handler=self.new_delayed_handler()
        )
        self.observers: list[HostObserver] = []
        self._verify_plan_hooks: list[VerifyPlanHook] = []
        self.prefix_cache: PrefixCache | None = None
        self.forward_count = 0

    # --- wiring -----------------------------------------------------------------------------

    def new_delayed_handler(self) -> DelayedDeviceHostHandler:
        return DelayedDeviceHostHandler(self.device, self.side_stream)

    def add_verify_plan_hook(self, hook: VerifyPlanHook) -> None:
        """Call ``hook.on_verify_plan_built`` in every forward's pre-ops, after each group's verify plan."""
        self._verify_plan_hooks.append(hook)

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
        """Pre-ops, capturable: plan, then verify and write the HEAD records."""
        self._fit_plans(rows)
        self.state.step.add_(1)
        hints = []
        for group, plans in zip(self.groups, self._plans):
            mapping = group.full_to_swa_index_mapping
            window = group.window if group.kind is PoolGroupKind.SWA else None
            verify_entries, write_entries, longest_run = self.kernels.build_plans(
                verify_plan=plans.verify,
                write_plan=plans.write,
                rows=rows,
                plan_overflow=self.state.plan_overflow,
                window=window,
                full_to_swa=mapping,
            )
            for hook in self._verify_plan_hooks:
                hook.on_verify_plan_built(group, plans.verify, rows)
            hints.append(
                LaunchHints(verify_entries=verify_entries, write_entries=write_entries, longest_run=longest_run)
            )
        self._hints = tuple(hints)
        self._run_phase(Phase.HEAD)

    def after_forward(self) -> None:
        """Post-ops, capturable: verify and write the TAIL records, hashing the real K/V just written."""
        self._run_phase(Phase.TAIL)

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

    def _fit_plans(self, rows: ForwardRows) -> None:
        """Grow, before planning, the plans a forward of host-known size would overflow.

        An entry dropped from a write plan leaves its slot's records unwritten, and every later
        verify would report that slot as corrupted: eager forwards therefore never overflow.
        Under graph capture the sizes are the config's (the host does not know the batch's);
        overflow is then counted on device and reported by the violation reporter.
        """
        if rows.prefix_lens_host is None:
            return
        fitted = []
        for group, plans in zip(self.groups, self._plans):
            window = group.window if group.kind is PoolGroupKind.SWA else None
            verify, write = plans.verify, plans.write
            needed = verify_entries_needed(rows.prefix_lens_host, window)
            if needed > verify.capacity:
                verify = VerifyPlan.allocate(_grown(verify.capacity, needed), self.device)
            if rows.num_new_tokens > write.capacity or rows.batch_size > write.request_capacity:
                write = self._write_plan(
                    _grown(write.capacity, rows.num_new_tokens), _grown(write.request_capacity, rows.batch_size)
                )
            if verify is not plans.verify or write is not plans.write:
                self.logger.info(
                    "kv_canary: %s plans grown to %d verify entries, %d write entries, %d requests "
                    "(set KV_CANARY_VERIFY_CAPACITY / _WRITE_CAPACITY / _MAX_REQUESTS_PER_FORWARD "
                    "to size them up front, as CUDA-graph capture needs)",
                    group.kind.value,
                    verify.capacity,
                    write.capacity,
                    write.request_capacity,
                )
            fitted.append(GroupPlans(verify=verify, write=write))
        self._plans = tuple(fitted)

    def _write_plan(self, capacity: int, request_capacity: int) -> WritePlan:
        return WritePlan.allocate(capacity=capacity, request_capacity=request_capacity, device=self.device)

    def _run_phase(self, phase: Phase) -> None:
        checks_on = not self.config.self_test_disable_verify  # the self-test switch blinds every check
        for group, plans, hints in zip(self.groups, self._plans, self._hints):
            # HEAD writes first: a slot that this forward both reads (a stale prefix) and hands to a
            # new token then fails the HEAD verify of this very forward. A correct engine never
            # plans one slot both ways, and every write chains from a slot the verify then checks.
            # TAIL verifies first, so that its real-KV check sees the bytes before the new hashes.
            if phase is Phase.HEAD:
                self._write_halves(phase, group, plans, hints, checks_on)
            for half, buffers in group.halves.items():
                self.kernels.verify(
                    records=group.records(phase, half),
                    plan=plans.verify,
                    launch_tag=group.launch_tag(phase, half),
                    state=self.state,
                    real_kv=buffers.real_kv if phase is Phase.TAIL else None,
                    check_tokens=self.config.verify_tokens,
                    record_violations=checks_on,
                    num_entries=hints.verify_entries,
                )
            if phase is Phase.TAIL:
                self._write_halves(phase, group, plans, hints, checks_on)

    def _write_halves(
        self, phase: Phase, group: CanaryBufferGroup, plans: GroupPlans, hints: LaunchHints, checks_on: bool
    ) -> None:
        for half, buffers in group.halves.items():
            self.kernels.write(
                records=group.records(phase, half),
                plan=plans.write,
                launch_tag=group.launch_tag(phase, half),
                state=self.state,
                real_kv=buffers.real_kv if phase is Phase.TAIL else None,
                assert_inputs=self.config.assert_write_inputs and checks_on,
                num_entries=hints.write_entries,
                max_entries_per_request=hints.longest_run,
            )

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
            "plan_overflow_entries": int(self.state.plan_overflow.item()),
            "kernel_runs": {tag.name: kernel_runs[tag] for tag in self.active_launch_tags},
            "slots_verified": {tag.name: slot_runs[tag] for tag in self.active_launch_tags},
            "kernel_backend": self.kernels.name,
        }


def _grown(capacity: int, needed: int) -> int:
    """At least ``needed``, at least twice the old capacity: a few growths, not one per forward."""
    return max(needed, 2 * capacity) if needed > capacity else capacity


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
