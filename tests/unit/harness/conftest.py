"""Shared helpers for the harness unit tests: scenario files in tmp_path, and the fake server."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.scenario import LoadedScenario, load_scenario_file

HERE = Path(__file__).parent
FAKE_SERVER_COMMAND = (sys.executable, str(HERE / "fake_server.py"))
DESIGN_EXAMPLE = HERE / "data" / "design_example.yaml"

BASELINE_MHA = """\
name: baseline-mha
description: A clean run.
model_modes: [mha]
workload:
  requests:
    - {prompt_len: 8, max_new_tokens: 4, count: 2}
expect:
  detected: false
"""

DETECT_EVICTION = """\
name: detect-eviction
description: Evict a locked radix node.
model_modes: [mha, swa]
workload:
  requests:
    - {prompt_len: 8, max_new_tokens: 4, count: 2}
  concurrency: 2
fault:
  kind: evict_radix_node
  at_step: 6
expect:
  detected: true
  within_steps: 4
  violations:
    - {launch_tag: "HEAD_*", fail_reason: "chain_hash"}
"""


@pytest.fixture
def write_scenario(tmp_path: Path) -> Callable[..., Path]:
    def write(text: str, name: str = "scenario.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def load_text(write_scenario: Callable[..., Path]) -> Callable[[str], LoadedScenario]:
    def load(text: str) -> LoadedScenario:
        return load_scenario_file(write_scenario(text))

    return load
