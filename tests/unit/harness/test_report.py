"""The detection report: results written per pair, rendered as report.md, report.json and heatmap.png."""

from __future__ import annotations

import json

import pytest

from harness.expectations import ExpectationOutcome, ExpectationResult
from harness.report import RunDirectory, RunDirectoryError, render_report, terminal_table
from harness.run_result import RunResult


def result(
    scenario: str, mode: str, *, held: bool = True, latency: int | None = 3, error: str | None = None
) -> RunResult:
    detected = held and latency is not None
    outcome = ExpectationOutcome(
        expectation="detected within 8 steps",
        held=held,
        reason="first violation at step 23" if held else "no violation logged",
        log_lines=("kv_canary violation: launch_tag=HEAD_K_FULL ...",),
    )
    check = (
        None
        if error
        else ExpectationResult(
            outcomes=(outcome,),
            injection_step=20,
            detected=detected,
            latency_steps=latency if detected else None,
            violation_count=2 if detected else 0,
            launch_tags_seen=("HEAD_K_FULL",) if detected else (),
            fail_reasons_seen=("chain_hash", "position") if detected else (),
        )
    )
    return RunResult(
        scenario=scenario,
        mode=mode,
        scenario_path=f"scenarios/{scenario}.yaml",
        check=check,
        error=error,
        wall_time_s=1.25,
        log_path=f"logs/{scenario}--{mode}.log",
    )


RESULTS = [
    result("evict-node", "mha"),
    result("evict-node", "swa", held=False),
    result("baseline", "mha", latency=None),
    result("remap-swa", "swa", error="ServerCrashed: boom\ntail"),
]


@pytest.fixture
def run_dir(tmp_path):
    directory = RunDirectory(tmp_path)
    for item in RESULTS:
        directory.write_result(item)
    return tmp_path


def test_results_round_trip_through_the_run_directory(run_dir):
    assert sorted(RunDirectory(run_dir).read_results(), key=RunResult.pair_id.fget) == sorted(
        RESULTS, key=RunResult.pair_id.fget
    )


def test_the_report_has_a_row_per_pair_in_every_format(run_dir):
    rendered = render_report(run_dir)
    assert (rendered.passed, rendered.failed) == (2, 2)
    markdown = rendered.markdown.read_text()
    assert "| evict-node | mha | pass | yes | 3 | 2 | chain_hash,position | 1.2 |" in markdown
    assert "| evict-node | swa | FAIL | no | - | 0 | - | 1.2 |" in markdown
    assert "| remap-swa | swa | ERROR | - | - | - | - | 1.2 |" in markdown
    assert "expected detected within 8 steps: no violation logged" in markdown
    assert "no verdict: ServerCrashed: boom" in markdown
    report = json.loads(rendered.json.read_text())
    assert report["summary"] == {"pairs": 4, "passed": 2, "failed": 2}
    rows = {(row["scenario"], row["mode"]): row for row in report["rows"]}
    assert rows[("evict-node", "mha")] | {"log_path": None} == {
        "scenario": "evict-node",
        "mode": "mha",
        "passed": True,
        "detected": True,
        "latency_steps": 3,
        "violation_count": 2,
        "reasons_seen": ["chain_hash", "position"],
        "launch_tags_seen": ["HEAD_K_FULL"],
        "wall_time_s": 1.25,
        "unmet": [],
        "error": None,
        "log_path": None,
    }
    assert rows[("evict-node", "swa")]["unmet"] == ["detected within 8 steps"]
    assert rows[("remap-swa", "swa")]["error"] == "ServerCrashed: boom"
    assert rendered.heatmap.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_the_terminal_table_lines_up(run_dir):
    lines = terminal_table(RunDirectory(run_dir).read_results()).splitlines()
    assert lines[0].split() == [
        "scenario",
        "mode",
        "result",
        "detected",
        "latency",
        "violations",
        "reasons",
        "wall",
        "s",
    ]
    assert lines[1].split() == ["baseline", "mha", "pass", "no", "-", "0", "-", "1.2"]
    mode_column = lines[0].index("mode")
    assert [line[mode_column:].split()[0] for line in lines[1:]] == ["mha", "mha", "swa", "swa"]


def test_a_directory_without_results_is_bad_input(tmp_path):
    with pytest.raises(RunDirectoryError, match="has no results/ folder"):
        render_report(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "broken.json").write_text("{")
    with pytest.raises(RunDirectoryError, match=r"broken.json: not a run result"):
        render_report(tmp_path)
