"""The tests of this folder run on SGLang's real classes.

Where SGLang is not installed (run .ci/install-sglang), the whole folder is skipped. Where it is,
torchvision is stubbed here (``torchvision_stub.py``: SGLang's imports need it beside a CPU build
of torch) before any test module imports SGLang through ``sglang_imports``.
"""

import importlib.util

import pytest

from mock_models.engine.sglang_backend import SGLANG_VERSION
from mock_models.engine.sglang_backend.torchvision_stub import install_if_missing

if importlib.util.find_spec("sglang") is None:
    pytest.skip(
        f"sglang {SGLANG_VERSION} is not installed: run .ci/install-sglang (see docs/SGLANG.md)",
        allow_module_level=True,
    )
install_if_missing()
