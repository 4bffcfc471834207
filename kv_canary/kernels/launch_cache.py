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
parameters must come in the order pointers, integers, constexprs.
"""

from __future__ import annotations

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


class LaunchCache:
    """Launches one ``@triton.jit`` kernel; under ``TRITON_INTERPRET`` it simply calls the kernel."""

    def __init__(self, kernel: object) -> None:
        self._kernel = kernel
        self._compiles = isinstance(kernel, triton.runtime.jit.JITFunction)  # False under TRITON_INTERPRET
        self._compiled: dict[tuple[object, ...], _CompiledLauncher] = {}

    @property
    def variants(self) -> int:
        """Compiled variants launched so far (one per distinct dtypes, alignments, warps and constexprs)."""
        return len(self._compiled)

    def launch(
        self,
        grid: tuple[int, ...],
        tensors: tuple[torch.Tensor, ...],
        scalars: tuple[int, ...],
        *,
        num_warps: int,
        **constexprs: object,
    ) -> None:
        """``tensors`` are the kernel's leading pointer parameters, ``scalars`` its integer ones, and
        ``constexprs`` the rest, given in the kernel's parameter order."""
        if not self._compiles:
            self._kernel[grid](*tensors, *scalars, num_warps=num_warps, **constexprs)  # type: ignore[index]
            return
        addresses = tuple(tensor.data_ptr() for tensor in tensors)
        key = (
            torch.cuda.current_device(),
            num_warps,
            *constexprs.values(),
            *(tensor.dtype for tensor in tensors),
            *(address % _ALIGNMENT == 0 for address in addresses),
        )
        compiled = self._compiled.get(key)
        if compiled is None:
            launched = self._kernel[grid](*tensors, *scalars, num_warps=num_warps, **constexprs)  # type: ignore[index]
            self._compiled[key] = _checked_launcher(launched.result() if hasattr(launched, "result") else launched)
            return
        grid3 = (grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1)
        compiled[grid3](*addresses, *scalars, *constexprs.values())


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
