"""Loaded by Python at start-up in every process of a live SGLang server run on the CPU (this folder
is first on PYTHONPATH; tools/live_sglang/env.sh cpu). Two CPU-only stand-ins, test tooling only:

* torchvision: PyPI's wheels need a CUDA torch, and SGLang imports it on the way to its memory
  pools; the mock engine's stub (mock_models/engine/sglang_backend/torchvision_stub.py) serves;
* pinned memory: SGLang asks for pinned host tensors (its token snapshot among them), which a
  CPU-only torch refuses ("pin_memory=True requires a CUDA or other accelerator backend"); here a
  pin request is dropped, which changes nothing where host and device memory are the same.
"""

import functools

import torch

from mock_models.engine.sglang_backend.torchvision_stub import install_if_missing

install_if_missing()


def _without_pinning(factory):
    @functools.wraps(factory)
    def make(*args, **kwargs):
        kwargs.pop("pin_memory", None)
        return factory(*args, **kwargs)

    return make


if not torch.cuda.is_available():
    for _name in ("tensor", "empty", "zeros", "ones", "full", "arange", "as_tensor", "empty_like", "zeros_like"):
        setattr(torch, _name, _without_pinning(getattr(torch, _name)))
    torch.Tensor.pin_memory = lambda self, *args, **kwargs: self
