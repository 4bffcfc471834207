"""Compile the canary's Triton kernels for a CUDA GPU without one: Triton's front end, LLVM and ptxas.

The interpreter runs the kernels' Python on the CPU but never builds them, so a construct the
compiler refuses (a constexpr reassigned in an unrolled loop, a scalar mask) would first show on
a GPU. This compiles the launch variants the canary uses, for sm_90, with the Triton installed.

    python -m tests.unit.canary.compile_kernels   # TRITON_INTERPRET must be unset
"""

from __future__ import annotations

import os
import sys
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import ASTSource

from kv_canary.kernels.forward_triton import _forward_kernel
from kv_canary.kernels.sweep_triton import _sweep_kernel

TARGET = GPUTarget("cuda", 90, 32)
FORWARD: dict[str, object] = {
    "NUM_GROUPS": 1,
    "FIRST_GROUP_SWA": False,
    "NUM_HALVES": 2,
    "TAG_0": 0,
    "TAG_1": 0,
    "HAS_TOKEN_IDS": True,
    "CHECK_TOKENS": True,
    "RECORD_VIOLATIONS": True,
    "ASSERT_INPUTS": True,
    "HASH_REAL_KV": False,
    "LOST_WRITES": False,
    "LAYER_BLOCK": 1,
    "WORD_CHUNK": 1,
    "REQUEST_BLOCK": 256,
    "VERIFY_BLOCK": 128,
    "WRITE_BLOCK": 32,
    "WRITE_BLOCK_LOG2": 5,
}
HASHING: dict[str, object] = {"HASH_REAL_KV": True, "LOST_WRITES": True, "LAYER_BLOCK": 4, "WORD_CHUNK": 2}
FORWARD_VARIANTS: list[dict[str, object]] = [
    {"VERIFY": False, "WRITE": True, "TAIL": False, "OPENS_FORWARD": True},
    {"VERIFY": True, "WRITE": False, "TAIL": False, "OPENS_FORWARD": False},
    {"VERIFY": True, "WRITE": True, "TAIL": True, "OPENS_FORWARD": False},
    {"VERIFY": True, "WRITE": True, "TAIL": True, "OPENS_FORWARD": False, "NUM_GROUPS": 2, "TAG_1": 8, **HASHING},
    {"VERIFY": False, "WRITE": True, "TAIL": False, "OPENS_FORWARD": True, "NUM_GROUPS": 2, **HASHING},
    {"VERIFY": True, "WRITE": False, "TAIL": False, "OPENS_FORWARD": False, "FIRST_GROUP_SWA": True, "NUM_HALVES": 1},
]
SWEEP: dict[str, object] = {
    "EXPLICIT": False,
    "VERIFY_GROUP_0": True,
    "VERIFY_GROUP_1": False,
    "GROUP_0_SWA": False,
    "NUM_HALVES": 2,
    "TAG_0": 4,
    "TAG_1": 10,
    "CHECK_TOKENS": True,
    "RECORD_VIOLATIONS": True,
    "HASH_REAL_KV": False,
    "LAYER_BLOCK": 1,
    "WORD_CHUNK": 1,
    "BLOCK": 64,
}
SWEEP_VARIANTS: list[dict[str, object]] = [
    {},
    {"EXPLICIT": True},
    {"VERIFY_GROUP_1": True, "HASH_REAL_KV": True, "LAYER_BLOCK": 4},
]


def _signature(kernel: triton.runtime.jit.JITFunction, constexprs: dict[str, object]) -> dict[str, str]:
    """Pointers as int64 (req_to_token as int32, as engines keep it), integers as int64."""
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name == "req_to_token_ptr":
            signature[name] = "*i32"
        elif name.endswith("_ptr") or name.startswith("records"):
            signature[name] = "*i64"
        else:
            signature[name] = "i64"
    return signature


def compile_variant(kernel: triton.runtime.jit.JITFunction, constexprs: dict[str, object], num_warps: int) -> float:
    started = time.perf_counter()
    source = ASTSource(kernel, _signature(kernel, constexprs), constexprs=constexprs)
    triton.compile(source, target=TARGET, options={"num_warps": num_warps})
    return time.perf_counter() - started


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("unset TRITON_INTERPRET: the interpreter replaces the kernels this compiles")
    print(f"triton {triton.__version__}, target {TARGET}")
    for variant in FORWARD_VARIANTS:
        seconds = compile_variant(_forward_kernel, {**FORWARD, **variant}, num_warps=4)
        print(f"  _forward_kernel {variant}: {seconds:.1f} s")
    for variant in SWEEP_VARIANTS:
        seconds = compile_variant(_sweep_kernel, {**SWEEP, **variant}, num_warps=2)
        print(f"  _sweep_kernel {variant}: {seconds:.1f} s")


if __name__ == "__main__":
    main()
