"""Launch compiled Triton kernels without re-binding their arguments through ``JITFunction`` each time.

``JITFunction.__call__`` re-derives a specialization key from every argument on each launch,
about a microsecond per argument on the host; the canary launches three kernels of twenty-odd
arguments per forward, so in eager mode that would dominate. After the first launch of a
variant, the compiled kernel is called directly through ``CompiledKernel.__getitem__(grid)``,
which takes plain ints wherever the kernel expects a pointer.

That launcher is not part of Triton's documented API (``tests/unit/canary/test_launch_cache.py``
fails loudly if it changes). A compiled variant fits a later call only if nothing Triton
specializes on differs, so the variant key holds each tensor's dtype and 16-byte alignment, the
warps and the constexprs; integer arguments must be declared ``do_not_specialize`` (Triton
would otherwise specialize on a value of 1 and on divisibility by 16), and a kernel's
parameters must come in the order pointers, integers, constexprs. The canary's own buffers never
move, so their addresses and specialization are read once per launcher, not once per launch.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch
import triton

from kv_canary.errors import KvCanaryError

_ALIGNMENT = 16  # bytes: Triton specializes a pointer argument on being a multiple of it


class _CompiledLauncher(Protocol):
    def __getitem__(self, grid: tuple[int, int, int]) -> _Runner: ...


class _Runner(Protocol):
    def __call__(self, *args: object) -> None: ...


class TritonLauncherChangedError(KvCanaryError, RuntimeError):
    """The installed Triton no longer launches a compiled kernel the way this cache relies on."""


@dataclasses.dataclass(frozen=True, slots=True)
class _StaticArguments:
    """A launcher's buffers that never move: their addresses and what Triton specializes on, read once."""

    tensors: tuple[torch.Tensor, ...]  # kept alive, so that the id the cache is keyed by stays theirs
    addresses: tuple[int, ...]
    specialization: tuple[object, ...]


class LaunchCache:
    """Launches one ``@triton.jit`` kernel; under ``TRITON_INTERPRET`` it simply calls the kernel.

    A launch's pointer arguments come in two groups, in the kernel's parameter order: ``dynamic``
    tensors (the engine's, new or refilled every forward: their addresses are read each time) then
    ``static`` ones (the canary's own buffers, allocated once and never moved: pass the same tuple
    object every time, and their addresses are read once).
    """

    def __init__(self, kernel: object) -> None:
        self._kernel = kernel
        self._compiles = isinstance(kernel, triton.runtime.jit.JITFunction)  # False under TRITON_INTERPRET
        self._compiled: dict[tuple[object, ...], _CompiledLauncher] = {}
        self._static: dict[int, _StaticArguments] = {}

    @property
    def variants(self) -> int:
        """Compiled variants launched so far (one per distinct dtypes, alignments, warps and constexprs)."""
        return len(self._compiled)

    def launch(
        self,
        grid: tuple[int, ...],
        dynamic: tuple[torch.Tensor, ...],
        static: tuple[torch.Tensor, ...],
        scalars: tuple[int, ...],
        *,
        num_warps: int,
        constexprs: dict[str, object],
    ) -> None:
        """``scalars`` are the kernel's integer parameters (after the pointers), ``constexprs`` the rest, in
        the kernel's parameter order."""
        if not self._compiles:
            self._kernel[grid](*dynamic, *static, *scalars, num_warps=num_warps, **constexprs)  # type: ignore[index]
            return
        fixed = self._static.get(id(static))
        if fixed is None:
            fixed = self._static[id(static)] = _static_arguments(static)
        addresses = tuple(tensor.data_ptr() for tensor in dynamic)
        key = (
            torch.cuda.current_device(),
            num_warps,
            *constexprs.values(),
            *(tensor.dtype for tensor in dynamic),
            *(address % _ALIGNMENT == 0 for address in addresses),
            *fixed.specialization,
        )
        compiled = self._compiled.get(key)
        if compiled is None:
            launched = self._kernel[grid](*dynamic, *static, *scalars, num_warps=num_warps, **constexprs)  # type: ignore[index]
            self._compiled[key] = _checked_launcher(launched.result() if hasattr(launched, "result") else launched)
            return
        grid3 = (grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1)
        compiled[grid3](*addresses, *fixed.addresses, *scalars, *constexprs.values())


def _static_arguments(static: tuple[torch.Tensor, ...]) -> _StaticArguments:
    addresses = tuple(tensor.data_ptr() for tensor in static)
    return _StaticArguments(
        tensors=static,
        addresses=addresses,
        specialization=(
            *(tensor.dtype for tensor in static),
            *(address % _ALIGNMENT == 0 for address in addresses),
        ),
    )


def _checked_launcher(compiled: object) -> _CompiledLauncher:
    getitem = getattr(type(compiled), "__getitem__", None)
    if getitem is None:
        raise TritonLauncherChangedError(
            f"kv_canary: Triton {triton.__version__} returned a {type(compiled).__qualname__} without "
            "__getitem__(grid) from a kernel launch; kernels/launch_cache.py launches compiled kernels through "
            "it. Pin triton to a version the canary supports (3.6 on the GPU, the interpreter of later ones) "
            "or update the launch cache"
        )
    return compiled  # type: ignore[return-value]
