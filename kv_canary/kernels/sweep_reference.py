"""The sweep in torch: the reference the Triton sweep launch (``sweep_launch``) is tested against.

A slice's segments are flattened into one walk (slot, position, predecessor, token per cached
token); per pool group the walk becomes a verify plan (``sweep_plan_reference``), and per K/V half
the HEAD records (no real K/V: they carry none) and the TAIL records (with the real-K/V hash) are
verified under the half's ``SWEEP_*`` tag.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kv_canary.buffer_group import CanaryBufferGroup
from kv_canary.device_state import CanaryDeviceState
from kv_canary.engine_protocols import RadixWalk
from kv_canary.kernels.settings import KernelSettings
from kv_canary.kernels.sweep_plan_reference import build_sweep_plan
from kv_canary.kernels.verify_reference import verify_canaries
from kv_canary.launch_tags import Phase, PoolGroupKind
from kv_canary.plans import PREV_SEQUENCE_START, TOKEN_UNKNOWN, SweepSegment, SweepSlice


class ReferenceSweep:
    def __init__(
        self,
        *,
        groups: tuple[CanaryBufferGroup, ...],
        state: CanaryDeviceState,
        settings: KernelSettings,
        device: torch.device,
    ) -> None:
        self._groups, self._state, self._settings, self._device = groups, state, settings, device

    def verify(self, sweep: SweepSlice, *, verify: Callable[..., None] | None) -> None:
        """``verify`` runs one launch tag's records (``verify_reference.verify_canaries``)."""
        if verify is None:
            raise ValueError("kv_canary: the torch sweep composes the reference verify kernel; pass it")
        verify_sweep(
            sweep=sweep,
            groups=self._groups,
            state=self._state,
            settings=self._settings,
            device=self._device,
            verify=verify,
        )


def verify_sweep(
    *,
    sweep: SweepSlice,
    groups: tuple[CanaryBufferGroup, ...],
    state: CanaryDeviceState,
    settings: KernelSettings,
    device: torch.device,
    verify: Callable[..., None] = verify_canaries,
) -> None:
    swa_resident = None
    if not sweep.is_walked:
        segments_walk, swa_resident = flatten_segments(sweep.segments, device)
    for group in groups:
        swa = group.kind is PoolGroupKind.SWA
        walk = (sweep.swa_walk if swa else sweep.walk) if sweep.is_walked else segments_walk
        if walk is None:
            raise ValueError(f"kv_canary: the sweep slice has no walk for the {group.kind.value} group")
        plan = build_sweep_plan(walk, group, swa_resident if swa else None)
        for half, buffers in group.halves.items():
            for phase, real_kv in ((Phase.HEAD, None), (Phase.TAIL, buffers.real_kv)):
                verify(
                    records=group.records(phase, half),
                    plan=plan,
                    launch_tag=group.launch_tag(Phase.SWEEP, half),
                    state=state,
                    real_kv=real_kv,
                    check_tokens=settings.check_tokens,
                    record_violations=settings.record_violations,
                    num_entries=walk.num_tokens,
                )


def flatten_segments(segments: tuple[SweepSegment, ...], device: torch.device) -> tuple[RadixWalk, torch.Tensor]:
    """The segments as one walk, and per token whether its segment is SWA-resident.

    A few ops for the whole slice: the per-token positions and predecessors are expanded from one
    value per segment."""
    if not segments:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return RadixWalk(slots=empty, positions=empty, prev_slots=empty, tokens=empty), empty.to(torch.bool)

    def host(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=device)

    lengths = host([segment.length for segment in segments])
    slots = torch.cat([segment.slots.to(device=device, dtype=torch.int64) for segment in segments])
    tokens = torch.cat(
        [
            torch.full((segment.length,), TOKEN_UNKNOWN, dtype=torch.int64, device=device)
            if segment.tokens is None
            else segment.tokens.to(device=device, dtype=torch.int64)
            for segment in segments
        ]
    )
    first_preds = torch.cat(
        [
            torch.full((1,), PREV_SEQUENCE_START, dtype=torch.int64, device=device)
            if segment.pred_values is None
            else segment.pred_values[segment.pred_index : segment.pred_index + 1].to(device=device, dtype=torch.int64)
            for segment in segments
        ]
    )
    total = slots.shape[0]
    segment_of = torch.repeat_interleave(torch.arange(len(segments), device=device), lengths, output_size=total)
    starts = torch.cumsum(lengths, 0) - lengths
    offset = torch.arange(total, device=device) - starts[segment_of]
    positions = host([segment.first_position for segment in segments])[segment_of] + offset
    prev_slots = torch.where(offset == 0, first_preds[segment_of], torch.roll(slots, 1))
    resident = torch.tensor([segment.swa_resident for segment in segments], device=device)[segment_of]
    return RadixWalk(slots=slots, positions=positions, prev_slots=prev_slots, tokens=tokens), resident
