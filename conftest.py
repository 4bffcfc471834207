"""Root test configuration.

Triton reads TRITON_INTERPRET when it is imported, so on machines without CUDA it is set here,
before any test module imports it: the Triton kernels then run on CPU tensors in the
interpreter, which is how their parity with the torch references is tested in CI.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
