"""A pure-torch stand-in for ``sgl_kernel``, for running SGLang 0.5.23 where the real package cannot load.

Why it exists: SGLang 0.5.23 pins ``sglang-kernel`` 0.4.10, built against torch 2.14; the GPU
machine here has torch 2.11 and this project's CPU machines torch 2.13, beside which that build
cannot load. SGLang imports names from ``sgl_kernel`` at module level all over its tree, so it
does not start without one. This stand-in is test tooling (tools/live_sglang/): nothing of it
ships in kv-canary's runtime, and a machine with a matching ``sglang-kernel`` must not put it on
the path.

What it holds: ``weak_ref_tensor`` (called by SGLang's prefill CUDA-graph capture; a tensor
sharing the storage does what SGLang needs), the ``scalar_type`` names quantization modules read
at import, and a stand-in for every other name or submodule SGLang looks up: a function that
raises ``NotImplementedError`` naming itself if it is ever called. The runs here (2-layer
dummy-weight Llama and Mellum, torch_native attention on the CPU, Triton on the GPU) only look
those names up.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

import torch


def weak_ref_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor on the same storage (SGLang keeps graph outputs alive through it)."""
    return tensor.view(tensor.shape) if isinstance(tensor, torch.Tensor) else tensor


def _unavailable(qualname: str):
    def call(*args, **kwargs):
        raise NotImplementedError(
            f"{qualname}: not implemented by the sgl_kernel stand-in (tools/live_sglang/standins); this run "
            "reached a kernel the stand-in only names. Use a matching sglang-kernel build"
        )

    call.__name__ = qualname.rsplit(".", 1)[-1]
    call.__qualname__ = qualname
    return call


def _names_on_demand(module_name: str):
    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _unavailable(f"{module_name}.{name}")

    return __getattr__


__getattr__ = _names_on_demand(__name__)


class _SubmoduleStandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``sgl_kernel.<anything>`` that has no file here (``allreduce``, ``kvcacheio``, ...): names on demand."""

    def find_spec(self, fullname, path, target=None):
        if fullname.startswith(__name__ + ".") and fullname.count(".") == 1:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name, "sgl_kernel stand-in submodule: every name raises if called")
        module.__getattr__ = _names_on_demand(spec.name)
        return module

    def exec_module(self, module):
        pass


sys.meta_path.append(_SubmoduleStandIns())  # after the path finders: real files here (scalar_type) win
