"""The launch cache's bargain with Triton: compiled kernels are launched through an undocumented door.

``kernels/launch_cache.py`` launches a compiled variant through ``CompiledKernel.__getitem__(grid)``
with the kernel's whole argument list, as ``JITFunction.run`` does on its first launch. These
tests fail loudly when the installed Triton changes either side of that: on the CPU by reading
the two launch paths of the Triton in use, on a GPU by launching through the cache.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable

import pytest
import torch
import triton
import triton.language as tl
from triton.compiler import CompiledKernel
from triton.runtime.jit import JITFunction

from kv_canary.kernels.launch_cache import LaunchCache, TritonLauncherChangedError, _checked_launcher


def _code(function: Callable[..., object]) -> str:
    return re.sub(r"\s+", "", inspect.getsource(function))


def test_a_compiled_kernel_is_launched_with_the_same_arguments_as_the_first_launch():
    """Both paths call ``CompiledKernel.run`` with the grid, the stream, the function handle and metadata,
    then every argument of the kernel, constexprs included, in parameter order."""
    first_launch = _code(JITFunction.run)
    assert "kernel.run(grid_0,grid_1,grid_2,stream,kernel.function,kernel.packed_metadata," in first_launch
    assert "*bound_args.values())" in first_launch
    assert "returnkernel" in first_launch, "JITFunction.run no longer returns the compiled kernel"

    parameters = list(inspect.signature(CompiledKernel.__getitem__).parameters)
    assert parameters == ["self", "grid"]
    later_launches = _code(CompiledKernel.__getitem__)
    assert "defrunner(*args,stream=None)" in later_launches
    assert "self.run(grid[0],grid[1],grid[2],stream,self.function,self.packed_metadata," in later_launches
    assert "*args)" in later_launches


def test_an_object_without_a_grid_launcher_is_refused_with_a_clear_error():
    with pytest.raises(TritonLauncherChangedError, match="__getitem__"):
        _checked_launcher(object())


@triton.jit(do_not_specialize=["offset"])
def _add_offset(source_ptr, target_ptr, offset, COUNT: tl.constexpr):
    lanes = tl.arange(0, COUNT)
    tl.store(target_ptr + lanes, tl.load(source_ptr + lanes) + offset)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_launches_after_the_first_go_through_the_compiled_kernel_and_compute_the_same():
    launches = LaunchCache(_add_offset)
    source = torch.arange(16, dtype=torch.int64, device="cuda")
    for offset in (1, 16, 7):  # 1 and 16 are values Triton would specialize on without do_not_specialize
        target = torch.zeros_like(source)
        launches.launch((1,), (source, target), (), (offset,), num_warps=1, constexprs={"COUNT": 16})
        torch.cuda.synchronize()
        assert torch.equal(target, source + offset)
    assert launches.variants == 1
    narrow = torch.arange(16, dtype=torch.int32, device="cuda")
    target = torch.zeros_like(narrow)
    launches.launch((1,), (narrow, target), (), (3,), num_warps=1, constexprs={"COUNT": 16})
    torch.cuda.synchronize()
    assert torch.equal(target, narrow + 3) and launches.variants == 2  # a new dtype compiles a new variant
