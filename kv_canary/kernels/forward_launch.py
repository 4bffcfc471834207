"""Launch compiled Triton kernels whose tensors change from one forward to the next.

``CompiledLaunchCache`` caches buffer addresses by ``id``, which is sound for the canary's own
buffers (allocated once, never moved) but not for the engine's per-forward tensors: in eager
mode they are new every forward (caching them would keep thousands alive), and their dtypes and
alignment may change between forwards (a decode batch's ``seq_lens - 1`` against an extend
batch's ``extend_prefix_lens``). So here every call reads the tensors' addresses afresh, and a
compiled variant is keyed by each tensor's dtype and 16-byte alignment, the two things Triton
specializes a pointer on, besides the warps and the constexprs. Integer arguments must still be
declared ``do_not_specialize``, and parameters ordered pointers, scalars, constexprs.
"""

from __future__ import annotations

import torch
import triton


class ForwardLaunchCache:
    def __init__(self, kernel: object) -> None:
        self._kernel = kernel
        self._compiles = isinstance(kernel, triton.runtime.jit.JITFunction)  # False under TRITON_INTERPRET
        self._compiled: dict[tuple, object] = {}

    def launch(
        self,
        grid: tuple[int, ...],
        tensors: tuple[torch.Tensor, ...],
        scalars: tuple[int, ...],
        *,
        num_warps: int,
        **constexprs: object,
    ) -> None:
        """``tensors`` are the kernel's leading pointer parameters, ``scalars`` its integer ones;
        ``constexprs`` must be given in the kernel's parameter order."""
        if not self._compiles:
            self._kernel[grid](*tensors, *scalars, num_warps=num_warps, **constexprs)
            return
        addresses = tuple(tensor.data_ptr() for tensor in tensors)
        key = (
            torch.cuda.current_device(),
            num_warps,
            *constexprs.values(),
            *(tensor.dtype for tensor in tensors),
            *(address % 16 == 0 for address in addresses),
        )
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._kernel[grid](*tensors, *scalars, num_warps=num_warps, **constexprs)
            self._compiled[key] = compiled.result() if hasattr(compiled, "result") else compiled
            return
        compiled[(*grid, 1, 1)[:3]](*addresses, *scalars, *constexprs.values())
