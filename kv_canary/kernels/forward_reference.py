"""The per-forward canary in torch: the reference the Triton launches (``forward_launch``) are tested against.

Per pool group it fills a verify plan and a write plan (``plan_reference``), then, before the
model runs, writes and verifies the HEAD records of every guarded K/V half, and after it
verifies and writes the TAIL records, hashing the real K/V (``verify_reference``,
``write_reference``). It is the backend on devices without Triton (the CPU) and the parity
oracle everywhere; it is obviously right rather than fast (about thirty small ops a group).

Plans have fixed capacities so that a captured graph can replay them. An eager forward whose
size the host knows and that would overflow them grows them first (a dropped write would leave
records that every later verify reports); under capture, entries beyond them are counted in
``plan_overflow`` and reported by the violation reporter.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import torch

from kv_canary.buffer_group import CanaryBufferGroup
from kv_canary.device_state import GROUP_INDEX, CanaryDeviceState
from kv_canary.forward_rows import ForwardRows
from kv_canary.kernels.plan_reference import build_group_plans, verify_entries_needed
from kv_canary.kernels.settings import KernelSettings
from kv_canary.launch_tags import Phase, PoolGroupKind
from kv_canary.plans import VerifyPlan, WritePlan


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _GroupPlans:
    verify: VerifyPlan
    write: WritePlan


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _LaunchHints:
    """Host-side sizes of this forward's plans, computed in the pre-ops and reused by the post-ops."""

    verify_entries: int | None  # None: only the device knows, check the whole plan
    write_entries: int


class ReferenceForward:
    """Runs a forward's HEAD (``before_forward``) and TAIL (``after_forward``) records with torch ops."""

    def __init__(
        self,
        *,
        groups: tuple[CanaryBufferGroup, ...],
        state: CanaryDeviceState,
        settings: KernelSettings,
        device: torch.device,
        logger: logging.Logger,
    ) -> None:
        self._groups = groups
        self._state = state
        self._settings = settings
        self._device = device
        self._logger = logger
        self._plans = tuple(
            _GroupPlans(
                verify=VerifyPlan.allocate(settings.verify_capacity, device),
                write=self._write_plan(settings.write_capacity, settings.request_capacity),
            )
            for _ in groups
        )
        self._hints: tuple[_LaunchHints, ...] = ()

    def before_forward(
        self, rows: ForwardRows, *, verify: Callable[..., None] | None, write: Callable[..., None] | None
    ) -> None:
        """Advance the step, plan, then per group write and verify the HEAD records.

        ``verify`` and ``write`` run one launch tag's records (``verify_reference``, ``write_reference``).
        """
        verify, write = _required(verify, write)
        self._fit_plans(rows)
        self._state.step.add_(1)
        hints = []
        for group, plans in zip(self._groups, self._plans, strict=True):
            verify_entries, write_entries, _ = build_group_plans(
                verify_plan=plans.verify,
                write_plan=plans.write,
                rows=rows,
                plan_overflow=self._state.plan_overflow,
                window=_window(group),
                full_to_swa=group.full_to_swa_index_mapping,
            )
            index = GROUP_INDEX[group.kind]
            self._state.verify_entries[index : index + 1].add_(plans.verify.num_valid)
            hints.append(_LaunchHints(verify_entries=verify_entries, write_entries=write_entries))
        self._hints = tuple(hints)
        for group, plans, group_hints in zip(self._groups, self._plans, self._hints, strict=True):
            # Write first: a slot this forward both reads (a stale prefix) and hands to a new token
            # then fails this very forward's verify. A correct engine never plans a slot both ways.
            self._write_halves(write, Phase.HEAD, group, plans, group_hints)
            self._verify_halves(verify, Phase.HEAD, group, plans, group_hints)

    def after_forward(
        self, rows: ForwardRows, *, verify: Callable[..., None] | None, write: Callable[..., None] | None
    ) -> None:
        """Per group verify the TAIL records (real K/V hashed as the model left it), then write them."""
        del rows  # planned in before_forward
        verify, write = _required(verify, write)
        for group, plans, group_hints in zip(self._groups, self._plans, self._hints, strict=True):
            self._verify_halves(verify, Phase.TAIL, group, plans, group_hints)
            self._write_halves(write, Phase.TAIL, group, plans, group_hints)

    def _verify_halves(
        self,
        verify: Callable[..., None],
        phase: Phase,
        group: CanaryBufferGroup,
        plans: _GroupPlans,
        hints: _LaunchHints,
    ) -> None:
        for half, buffers in group.halves.items():
            verify(
                records=group.records(phase, half),
                plan=plans.verify,
                launch_tag=group.launch_tag(phase, half),
                state=self._state,
                real_kv=buffers.real_kv if phase is Phase.TAIL else None,
                check_tokens=self._settings.check_tokens,
                record_violations=self._settings.record_violations,
                num_entries=hints.verify_entries,
            )

    def _write_halves(
        self,
        write: Callable[..., None],
        phase: Phase,
        group: CanaryBufferGroup,
        plans: _GroupPlans,
        hints: _LaunchHints,
    ) -> None:
        settings = self._settings
        for half, buffers in group.halves.items():
            tail = phase is Phase.TAIL
            write(
                records=group.records(phase, half),
                plan=plans.write,
                launch_tag=group.launch_tag(phase, half),
                state=self._state,
                real_kv=buffers.real_kv if tail else None,
                assert_inputs=settings.assert_inputs,
                num_entries=hints.write_entries,
                poison=buffers.real_kv if settings.poison_new_slots and not tail else None,
                lost_write_check=buffers.real_kv if settings.check_lost_writes and tail else None,
            )

    def _fit_plans(self, rows: ForwardRows) -> None:
        """Grow, before planning, the plans a forward of host-known size would overflow."""
        if rows.prefix_lens_host is None:
            return
        fitted = []
        for group, plans in zip(self._groups, self._plans, strict=True):
            verify, write = plans.verify, plans.write
            needed = verify_entries_needed(rows.prefix_lens_host, _window(group))
            if needed > verify.capacity:
                verify = VerifyPlan.allocate(_grown(verify.capacity, needed), self._device)
            if rows.num_new_tokens > write.capacity or rows.batch_size > write.request_capacity:
                write = self._write_plan(
                    _grown(write.capacity, rows.num_new_tokens), _grown(write.request_capacity, rows.batch_size)
                )
            if verify is not plans.verify or write is not plans.write:
                self._logger.info(
                    "kv_canary: %s plans grown to %d verify entries, %d write entries, %d requests "
                    "(set KV_CANARY_VERIFY_CAPACITY / _WRITE_CAPACITY / _MAX_REQUESTS_PER_FORWARD "
                    "to size them up front, as CUDA-graph capture with the torch kernels needs)",
                    group.kind.value,
                    verify.capacity,
                    write.capacity,
                    write.request_capacity,
                )
            fitted.append(_GroupPlans(verify=verify, write=write))
        self._plans = tuple(fitted)

    def _write_plan(self, capacity: int, request_capacity: int) -> WritePlan:
        return WritePlan.allocate(capacity=capacity, request_capacity=request_capacity, device=self._device)


def _required(
    verify: Callable[..., None] | None, write: Callable[..., None] | None
) -> tuple[Callable[..., None], Callable[..., None]]:
    if verify is None or write is None:
        raise ValueError("kv_canary: the torch forward composes the reference verify and write kernels; pass both")
    return verify, write


def _window(group: CanaryBufferGroup) -> int | None:
    return group.window if group.kind is PoolGroupKind.SWA else None


def _grown(capacity: int, needed: int) -> int:
    """At least ``needed``, at least twice the old capacity: a few growths, not one per forward."""
    return max(needed, 2 * capacity) if needed > capacity else capacity
