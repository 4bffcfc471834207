"""Scenario texts and paths shared by the harness unit tests."""

from __future__ import annotations

import sys
from pathlib import Path

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


def process_is_gone(pid: int) -> bool:
    """Gone or a zombie (an orphan reaped late by a container's init is as dead as it gets)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status
