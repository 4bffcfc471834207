"""Root test configuration.

Loads kv-canary's pytest plugin (``--model-mode``, the scenario items, the e2e fixtures) for this
repository's runs; installing kv-canary does not register it anywhere else.

Triton reads TRITON_INTERPRET when it is imported, so on machines without CUDA it is set here,
before any test module imports it: the Triton kernels then run on CPU tensors in the
interpreter, which is how their parity with the torch references is tested in CI.
"""

import os

import torch

pytest_plugins = ["harness.pytest_plugin"]

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
