"""The fault injector's ``sglang.srt.plugins`` entry point, given only to the servers the harness starts.

kv-canary's distribution declares no entry point for the injector: an engine that installs
kv-canary must never load a tool that corrupts its memory. SGLang finds its plugins through
``importlib.metadata``, which reads every ``*.dist-info`` folder on ``sys.path``; so the harness
writes a distribution holding that one entry point into the run's directory and puts the folder
first on the test server's ``PYTHONPATH``. The injector's code is ``sglang_faults`` (on the path
with the checkout); even loaded, it does nothing without its port and token (``sglang_faults.settings``).
"""

from __future__ import annotations

from pathlib import Path

DISTRIBUTION = "kv_canary_fault_injector"
ENTRY_POINT = "sglang_faults.plugin:register"


def write_entry_point(directory: Path) -> Path:
    """Write the distribution into ``directory``; returns the folder to put on ``PYTHONPATH``."""
    dist_info = directory / f"{DISTRIBUTION}-0.dist-info"
    dist_info.mkdir(parents=True, exist_ok=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: 0\n")
    (dist_info / "entry_points.txt").write_text(f"[sglang.srt.plugins]\n{DISTRIBUTION} = {ENTRY_POINT}\n")
    return directory
