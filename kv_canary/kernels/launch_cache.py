"""Launch compiled Triton kernels without re-binding their arguments on every call.

``JITFunction.__call__`` re-derives a specialization key from every argument on each launch,
and the launcher asks every tensor for its ``data_ptr()``; together that costs about a
microsecond per argument on the host, and the canary launches several kernels per forward, so
in eager mode it would dominate small launches. After the first launch of a constexpr
combination, the compiled kernel is called directly, with the buffers' addresses cached as ints
(Triton's launchers take an int wherever a pointer is expected).

This is sound because the kernels declare their integer arguments ``do_not_specialize``, the
canary's buffers are allocated once and never move, and every pointer passed is the base of a
torch allocation, aligned far beyond the 16 bytes Triton specializes on: one compiled variant
fits every later call.
"""

from __future__ import annotations

import torch
import triton

from kv_canary.real_kv import RealKvSource

_MAX_CACHED_BUFFER_SETS = 4096


class CompiledLaunchCache:
    def __init__(self, kernel: object) -> None:
        self._kernel = kernel
        self._compiles = isinstance(kernel, triton.runtime.jit.JITFunction)  # False under TRITON_INTERPRET
        self._compiled: dict[tuple, object] = {}
        # id()s of a set of buffers -> (the buffers, kept alive so their ids stay theirs; their addresses)
        self._addresses: dict[tuple[int, ...], tuple[tuple[torch.Tensor, ...], tuple[int, ...]]] = {}

    def launch(
        self,
        grid: tuple[int, ...],
        buffers: tuple[torch.Tensor, ...],
        scalars: tuple[int, ...],
        *,
        num_warps: int,
        **constexprs: object,
    ) -> None:
        """``buffers`` are the kernel's leading pointer parameters, ``scalars`` its integer ones."""
        if not self._compiles:
            self._kernel[grid](*buffers, *scalars, num_warps=num_warps, **constexprs)
            return
        key = (torch.cuda.current_device(), num_warps, *constexprs.values())
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._kernel[grid](*buffers, *scalars, num_warps=num_warps, **constexprs)
            self._compiled[key] = compiled.result() if hasattr(compiled, "result") else compiled
            return
        compiled[(*grid, 1, 1)[:3]](*self._addresses_of(buffers), *scalars, *constexprs.values())

    def _addresses_of(self, buffers: tuple[torch.Tensor, ...]) -> tuple[int, ...]:
        ids = tuple(map(id, buffers))
        cached = self._addresses.get(ids)
        if cached is None:
            if len(self._addresses) >= _MAX_CACHED_BUFFER_SETS:
                self._addresses.clear()
            cached = (buffers, tuple(buffer.data_ptr() for buffer in buffers))
            self._addresses[ids] = cached
        return cached[1]


def real_kv_arguments(
    real_kv: RealKvSource | None, placeholder: torch.Tensor
) -> tuple[torch.Tensor, tuple[int, ...], dict[str, int]]:
    """(layer pointer table, (layers, row words, hashed words), tile constexprs); a placeholder table
    when hashing is off. Tiles span up to 16 layers and 8 words, so a block's reads go out together."""
    if real_kv is None:
        return placeholder, (0, 0, 0), {"LAYER_BLOCK": 1, "WORD_CHUNK": 1}
    layers = len(real_kv.layer_words)
    tile = {
        "LAYER_BLOCK": min(16, triton.next_power_of_2(layers)),
        "WORD_CHUNK": min(8, triton.next_power_of_2(real_kv.hashed_words)),
    }
    return real_kv.layer_pointers, (layers, real_kv.row_words, real_kv.hashed_words), tile
