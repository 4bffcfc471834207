"""Loaded by Python at start-up in every process of a live SGLang server on the GPU machine (this
folder is on PYTHONPATH; tools/live_sglang/env.sh cuda). Test tooling only.

SGLang 0.5.23's Llama and Qwen2 MLPs import ``sglang.kernels.ops.gemm.cutedsl_dual_gemm`` on every
CUDA device (``srt/layers/dual_gemm.py``), and that module needs NVIDIA's CUTLASS DSL, which the
GPU machine does not have; its ``can_use_dual_gemm`` only says yes on SM100 anyway. Where
``cutlass`` does not import, this serves a stand-in for that one module: the names dual_gemm.py
reads, and ``can_use_dual_gemm`` always False, so SGLang takes its ordinary MLP path.
"""

import enum
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

_MODULE = "sglang.kernels.ops.gemm.cutedsl_dual_gemm"


class DualGemmQuantMode(enum.IntEnum):
    STATIC_PER_TENSOR = 0
    STATIC_PER_TOKEN = 1
    DYNAMIC_PER_TENSOR = 2
    DYNAMIC_PER_TOKEN = 3
    UNQUANT = 4


def can_use_dual_gemm(*args, **kwargs) -> bool:
    return False


class _DualGemmStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        return importlib.machinery.ModuleSpec(fullname, self) if fullname == _MODULE else None

    def create_module(self, spec):
        module = types.ModuleType(spec.name, "stand-in: the CUTLASS DSL is not installed here")
        module.MAX_DUAL_GEMM_DECODE_TOKENS = 16
        module.DualGemmQuantMode = DualGemmQuantMode
        module.can_use_dual_gemm = can_use_dual_gemm
        return module

    def exec_module(self, module):
        pass


if importlib.util.find_spec("cutlass") is None:
    sys.meta_path.insert(0, _DualGemmStandIn())
