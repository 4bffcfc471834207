"""A `kv-canary run` killed midway leaves a run directory that says it is incomplete and which pairs
finished; `run --resume` finishes the rest, and the report is the one an uninterrupted run gives.

Real processes for the run that is killed and the one that resumes it: `python -m harness run`
against the scripted fake server, killed with SIGKILL (no `finally`, no handler) while it waits on
a pair whose server never answers. The uninterrupted run and `report` run in process (click's runner).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from harness.cli import cli
from tests.reliability.process_checks import process_alive
from tests.unit.harness.samples import BASELINE_MHA, DETECT_EVICTION, FAKE_SERVER_COMMAND

REPO_ROOT = Path(__file__).resolve().parents[2]


def kv_canary(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "harness", *map(str, args)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def run_args(library: Path, report: Path) -> list[str]:
    return ["run", str(library), "--report", str(report), "--server-command", " ".join(FAKE_SERVER_COMMAND)]


def comparable_report(run_dir: Path) -> dict:
    """report.json without what differs between two runs of the same pairs: wall times and paths."""
    report = json.loads((run_dir / "report.json").read_text())
    for row in report["rows"]:
        row.pop("wall_time_s"), row.pop("log_path")
    return report


def test_a_killed_run_says_what_never_ran_and_resume_finishes_it(tmp_path):
    library = tmp_path / "library"
    library.mkdir()
    (library / "baseline-mha.yaml").write_text(BASELINE_MHA)
    (library / "detect-eviction.yaml").write_text(DETECT_EVICTION)
    whole = CliRunner().invoke(cli, run_args(library, tmp_path / "whole"), catch_exceptions=False)
    assert whole.exit_code == 0, whole.output

    killed_dir = tmp_path / "killed"
    killed = kv_canary(*run_args(library, killed_dir), env={"FAKE_SERVER_BEHAVIOUR": "detect,hang_generate_swa"})
    stuck_log = killed_dir / "logs" / "detect-eviction--swa.log"
    deadline = time.monotonic() + 120
    while not (stuck_log.exists() and "listening on" in stuck_log.read_text()):  # the two mha pairs are done
        assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()
        time.sleep(0.1)
    server_pid = int(stuck_log.read_text().split("fake server pid=")[1].split()[0])
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)

    report = (killed_dir / "report.md").read_text()
    assert "**Incomplete run: 1 of 3 planned (scenario, mode) pairs never ran (detect-eviction[swa])" in report
    assert "2 of 2 (scenario, mode) pairs held every expectation." in report
    assert sorted(path.name for path in (killed_dir / "results").iterdir()) == [
        "baseline-mha--mha.json",
        "detect-eviction--mha.json",
    ]
    rerendered = CliRunner().invoke(cli, ["report", str(killed_dir)], catch_exceptions=False)
    assert rerendered.exit_code == 1
    assert f"finish them with `kv-canary run --resume --report {killed_dir}`" in rerendered.output
    deadline = time.monotonic() + 30  # the server got SIGTERM when its parent died
    while process_alive(server_pid):
        assert time.monotonic() < deadline, f"the stuck pair's server {server_pid} outlived the killed run"
        time.sleep(0.1)

    resumed = kv_canary("run", "--resume", "--report", killed_dir)
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    assert "3 passed, 0 failed" in stdout
    assert comparable_report(killed_dir) == comparable_report(tmp_path / "whole")
    assert "Incomplete" not in (killed_dir / "report.md").read_text()
