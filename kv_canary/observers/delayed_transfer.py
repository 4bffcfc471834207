"""Stage device values at step T, read them on the host at step T+1, without stalling the forward."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

DeviceSnapshot = dict[str, torch.Tensor]


@dataclasses.dataclass(kw_only=True, slots=True)
class _Staged:
    host: DeviceSnapshot
    context: Any
    ready: torch.cuda.Event | None


def new_stream(device: torch.device) -> torch.cuda.Stream:
    """A side stream of ``device`` (torch's ``Stream()`` constructor carries no annotations)."""
    return torch.cuda.Stream(device)  # type: ignore[no-untyped-call]


class DelayedDeviceHostHandler:
    """One staged snapshot in flight at a time.

    On CUDA the snapshot is cloned on the compute stream (so later kernels may go on mutating the
    originals), copied into pinned memory on a side stream, and an event is recorded; a step
    later the event has long completed and reading the host copy costs nothing. On CPU it is a
    plain copy, delayed the same way so both devices behave alike.
    """

    def __init__(self, device: torch.device, side_stream: torch.cuda.Stream | None = None) -> None:
        if device.type == "cuda" and side_stream is None:
            side_stream = new_stream(device)
        self._device = device
        self._side_stream = side_stream
        self._staged: _Staged | None = None

    def step(
        self,
        *,
        compute_on_device: Callable[[], tuple[DeviceSnapshot, Any] | None],
        postprocess_on_host: Callable[[DeviceSnapshot, Any], None],
    ) -> None:
        """Hand the previous step's snapshot to ``postprocess_on_host``, then stage this step's."""
        if self._device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "kv_canary: DelayedDeviceHostHandler.step() was called during CUDA-graph capture; "
                "host-side observers must run outside the captured region"
            )
        try:
            self._deliver(postprocess_on_host)
        finally:
            # Staged even when delivering the previous snapshot raised (the violation reporter in
            # mode raise): else the next step would have nothing to deliver, and every report after
            # an error would come a step late.
            produced = compute_on_device()
            if produced is not None:
                snapshot, context = produced
                self._staged = self._stage(snapshot, context)

    def flush(self, postprocess_on_host: Callable[[DeviceSnapshot, Any], None]) -> None:
        """Deliver whatever is staged now (blocking); for shutdown and explicit reads between forwards."""
        self._deliver(postprocess_on_host)

    def _deliver(self, postprocess_on_host: Callable[[DeviceSnapshot, Any], None]) -> None:
        staged, self._staged = self._staged, None
        if staged is None:
            return
        if staged.ready is not None:
            staged.ready.synchronize()
        postprocess_on_host(staged.host, staged.context)

    def _stage(self, snapshot: DeviceSnapshot, context: Any) -> _Staged:
        if self._device.type != "cuda":
            return _Staged(
                host={name: value.detach().clone() for name, value in snapshot.items()}, context=context, ready=None
            )
        compute_stream = torch.cuda.current_stream(self._device)
        frozen = {name: value.detach().clone() for name, value in snapshot.items()}
        # Explicitly on the CPU: engines may set a CUDA default device, and only CPU memory pins.
        host = {
            name: torch.empty(value.shape, dtype=value.dtype, device="cpu", pin_memory=True)
            for name, value in frozen.items()
        }
        side_stream = self._side_stream
        assert side_stream is not None  # set in __init__ for a CUDA device
        side_stream.wait_stream(compute_stream)
        with torch.cuda.stream(side_stream):
            for name, value in frozen.items():
                host[name].copy_(value, non_blocking=True)
                value.record_stream(side_stream)
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]  # torch's Event(): no annotations
            ready.record(side_stream)
        return _Staged(host=host, context=context, ready=ready)
