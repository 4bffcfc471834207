"""The Triton kernels compile for a CUDA GPU with the installed Triton, on a machine without one (slow).

pytest -m slow tests/unit/canary/test_kernels_compile.py
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_every_launch_variant_compiles_for_sm90():
    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    finished = subprocess.run(
        [sys.executable, "-m", "tests.unit.canary.compile_kernels"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
