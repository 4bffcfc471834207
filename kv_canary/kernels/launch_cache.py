"""Launch compiled Triton kernels without re-binding their arguments on every call.

``JITFunction.__call__`` re-derives a specialization key from every argument on each launch,
which costs about a microsecond per argument on the host; the canary launches several kernels
per forward, so in eager mode that overhead would dominate small launches. After the first
launch of a constexpr combination, the compiled kernel is called directly.

This is sound only because the kernels declare their integer arguments ``do_not_specialize``
and every pointer the canary passes is the base of a torch allocation (aligned far beyond the
16 bytes Triton specializes on), so one compiled variant fits every later call.
"""

from __future__ import annotations

import torch
import triton

from kv_canary.real_kv import RealKvSource


class CompiledLaunchCache:
    def __init__(self, kernel: object) -> None:
        self._kernel = kernel
        self._compiles = isinstance(kernel, triton.runtime.jit.JITFunction)  # False under TRITON_INTERPRET
        self._compiled: dict[tuple, object] = {}

    def launch(self, grid: tuple[int, ...], *args: object, **constexprs: object) -> None:
        if not self._compiles:
            self._kernel[grid](*args, **constexprs)
            return
        key = (torch.cuda.current_device(), *constexprs.items())
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._kernel[grid](*args, **constexprs)
            self._compiled[key] = compiled.result() if hasattr(compiled, "result") else compiled
            return
        compiled[(*grid, 1, 1)[:3]](*args, *constexprs.values())  # the compiled launcher takes x, y and z


def real_kv_arguments(real_kv: RealKvSource | None, placeholder: torch.Tensor) -> tuple[object, int, int, int]:
    """(layer pointer table, layers, row words, hashed words); a placeholder pointer when hashing is off."""
    if real_kv is None:
        return placeholder, 0, 0, 0
    return real_kv.layer_pointers, len(real_kv.layer_words), real_kv.row_words, real_kv.hashed_words
