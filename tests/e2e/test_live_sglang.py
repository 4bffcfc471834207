"""Scenarios against a live SGLang 0.5.23 server on the CPU: ``kv-canary run --target sglang --device
cpu``, the canary installed through SGLang's plugin entry point, faults injected in its scheduler.

Needs SGLang with its server's imports (.ci/install-sglang) and the CPU stand-ins
(tools/live_sglang/env.sh cpu, which each run sources). One pair runs in the default run (about
two to three minutes, most of it SGLang's start-up); the other live scenarios are marked slow:
``.venv/bin/python -m pytest -m "sglang and slow" tests/e2e/test_live_sglang.py``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.sglang, pytest.mark.e2e]

if importlib.util.find_spec("sglang") is None:
    pytest.skip("sglang 0.5.23 is not installed: run .ci/install-sglang (see docs/SGLANG.md)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
PAIR_TIMEOUT_S = 900


def run_live(pair: str, report_dir: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """``pair`` is 'scenario-mode': the scenario file's name and the one mode it runs in here."""
    scenario, mode = pair.rsplit("-", 1)
    command = (
        f"source tools/live_sglang/env.sh cpu && exec {sys.executable} -m harness run scenarios/{scenario}.yaml "
        f"--model-mode {mode} --target sglang --device cpu --report {report_dir}"
    )
    result = subprocess.run(
        ["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=PAIR_TIMEOUT_S, check=False
    )
    report = json.loads((report_dir / "report.json").read_text()) if (report_dir / "report.json").exists() else {}
    return result, report


def assert_passed(result: subprocess.CompletedProcess, report: dict) -> dict:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    (row,) = report["rows"]
    assert row["passed"], row
    return row


def test_a_live_server_installs_the_canary_by_plugin_and_catches_a_remapped_req_to_token_entry(tmp_path):
    row = assert_passed(*run_live("req-to-token-remap-mha", tmp_path))
    assert row["detected"] and row["latency_steps"] <= 4
    log = Path(row["log_path"]).read_text()
    assert "kv_canary: installed on MHATokenToKVPool" in log
    assert "token checks on" in log
    assert "kv_canary: sweep attached to UnifiedRadixCache" in log
    assert "kv_canary fault injector listening on http://127.0.0.1:" in log
    assert "status=applied step=" in log


@pytest.mark.slow
@pytest.mark.parametrize(
    "scenario",
    [
        "baseline-mha",
        "double-free-mha",
        "evict-locked-radix-node-mha",
        "corrupt-kv-bytes-used-mha",
        "corrupt-kv-bytes-cached-unused-mha",
        "swap-next-token-mha",
        "baseline-swa",
        "req-to-token-remap-swa",
        "double-free-swa",
        "evict-locked-radix-node-swa",
        "corrupt-kv-bytes-used-swa",
        "corrupt-kv-bytes-cached-unused-swa",
        "swap-next-token-swa",
        "remap-swa-slot-swa",
    ],
)
def test_live_cpu_scenario(tmp_path, scenario):
    row = assert_passed(*run_live(scenario, tmp_path))
    assert row["detected"] == (not scenario.startswith("baseline"))
