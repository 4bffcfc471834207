"""Pick the Triton kernels or their torch references for an install."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Protocol

import torch

from kv_canary.buffer_group import CanaryBufferGroup
from kv_canary.config import KernelBackend
from kv_canary.device_state import CanaryDeviceState
from kv_canary.forward_rows import ForwardRows
from kv_canary.kernels import verify_reference, write_reference
from kv_canary.kernels.forward_reference import ReferenceForward
from kv_canary.kernels.settings import KernelSettings
from kv_canary.kernels.sweep_reference import ReferenceSweep
from kv_canary.plans import SweepSlice


class ForwardKernels(Protocol):
    """A forward's HEAD and TAIL records (capturable). ``verify`` and ``write`` are the per-launch-tag
    reference kernels a torch backend composes (``CanaryKernels.verify``/``write``), None for Triton."""

    def before_forward(
        self, rows: ForwardRows, *, verify: Callable[..., None] | None, write: Callable[..., None] | None
    ) -> None: ...

    def after_forward(
        self, rows: ForwardRows, *, verify: Callable[..., None] | None, write: Callable[..., None] | None
    ) -> None: ...


class SweepKernels(Protocol):
    def verify(self, sweep: SweepSlice, *, verify: Callable[..., None] | None) -> None: ...


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CanaryKernels:
    """The device work of one install.

    The torch backend composes one launch tag's ``verify`` and ``write`` (its reference kernels, a
    seam the tests replace to unwire a phase); the Triton backend fuses every tag of a phase into
    one launch and has none.
    """

    name: str
    forward: ForwardKernels
    sweep: SweepKernels
    verify: Callable[..., None] | None
    write: Callable[..., None] | None


def select_kernels(
    backend: KernelBackend,
    *,
    groups: tuple[CanaryBufferGroup, ...],
    state: CanaryDeviceState,
    settings: KernelSettings,
    device: torch.device,
    logger: logging.Logger,
) -> CanaryKernels:
    if backend is KernelBackend.TORCH or (backend is KernelBackend.AUTO and device.type != "cuda"):
        return CanaryKernels(
            name="torch",
            forward=ReferenceForward(groups=groups, state=state, settings=settings, device=device, logger=logger),
            sweep=ReferenceSweep(groups=groups, state=state, settings=settings, device=device),
            verify=verify_reference.verify_canaries,
            write=write_reference.write_canaries,
        )
    # Imported here so that CPU-only installs never need Triton.
    from kv_canary.kernels.forward_launch import TritonForward
    from kv_canary.kernels.group_layout import GroupLayout
    from kv_canary.kernels.sweep_launch import TritonSweep

    layout = GroupLayout.of(groups, placeholder=state.step)
    return CanaryKernels(
        name="triton",
        forward=TritonForward(layout=layout, state=state, settings=settings),
        sweep=TritonSweep(layout=layout, state=state, settings=settings),
        verify=None,
        write=None,
    )
