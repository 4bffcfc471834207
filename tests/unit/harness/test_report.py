"""The detection report: results written per pair, rendered as report.md, report.json and heatmap.png."""

from __future__ import annotations

import dataclasses
import json

import pytest

from harness.expectations import ExpectationOutcome, ExpectationResult
from harness.outputs import WrongOutput
from harness.report import PlannedScenario, RunDirectory, RunDirectoryError, RunPlan, render_report, terminal_table
from harness.report.heatmap import LEGEND, cell_label, heatmap_figure
from harness.run_result import RunResult


def result(
    scenario: str,
    mode: str,
    *,
    held: bool = True,
    latency: int | None = 3,
    error: str | None = None,
    expects_detection: bool = True,
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
            expects_detection=expects_detection,
            within_steps=8 if expects_detection else None,
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
    result("baseline", "mha", latency=None, expects_detection=False),
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
    assert "| evict-node | mha | detect <=8 | pass | yes | 3 | 2 | chain_hash,position | 1.2 |" in markdown
    assert "| evict-node | swa | detect <=8 | FAIL | no | - | 0 | - | 1.2 |" in markdown
    assert "| baseline | mha | clean | pass | no | - | 0 | - | 1.2 |" in markdown
    assert "| remap-swa | swa | - | ERROR | - | - | - | - | 1.2 |" in markdown
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
        "violations_by_rank": {},
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
        "expected",
        "result",
        "detected",
        "latency",
        "violations",
        "reasons",
        "wall",
        "s",
    ]
    assert lines[1].split() == ["baseline", "mha", "clean", "pass", "no", "-", "0", "-", "1.2"]
    mode_column = lines[0].index("mode")
    assert [line[mode_column:].split()[0] for line in lines[1:]] == ["mha", "mha", "swa", "swa"]


def test_a_directory_without_results_is_bad_input(tmp_path):
    with pytest.raises(RunDirectoryError, match="has no results/ folder"):
        render_report(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "broken.json").write_text("{")
    with pytest.raises(RunDirectoryError, match=r"broken.json: not a run result"):
        render_report(tmp_path)


def late(scenario: str = "evict-node", mode: str = "mha", *, lines: int = 12) -> RunResult:
    """A detection 6 forwards after the injection, against a bound of 4: 2 late."""
    violation = "kv_canary violation: launch_tag=HEAD_K_FULL fail_reason=chain_hash slot_idx={} position=40 step=26"
    logged = tuple(violation.format(slot) for slot in range(lines))
    outcome = ExpectationOutcome(
        expectation="detected within 4 steps",
        held=False,
        reason="first violation at step 26, 6 steps after the injection at step 20; the bound is 4",
        log_lines=logged[:10],
        line_count=lines,
        label="late +2",
    )
    check = ExpectationResult(
        outcomes=(outcome,),
        injection_step=20,
        detected=False,
        latency_steps=6,
        violation_count=lines,
        launch_tags_seen=("HEAD_K_FULL",),
        fail_reasons_seen=("chain_hash",),
        expects_detection=True,
        within_steps=4,
    )
    return RunResult(
        scenario=scenario,
        mode=mode,
        scenario_path=f"scenarios/{scenario}.yaml",
        check=check,
        error=None,
        wall_time_s=2.0,
        log_path=f"logs/{scenario}--{mode}.log",
    )


def test_a_detection_past_its_bound_reads_late_by_how_much(tmp_path):
    RunDirectory(tmp_path).write_result(late())
    markdown = render_report(tmp_path).markdown.read_text()
    assert "| evict-node | mha | detect <=4 | FAIL | late +2 | 6 | 12 | chain_hash | 2.0 |" in markdown
    assert cell_label(late()) == "late +2"


def test_a_failure_message_gives_the_first_line_the_count_and_the_log_not_every_line():
    message = late(lines=12).failure_message().splitlines()
    assert message == [
        "evict-node[mha] (scenarios/evict-node.yaml) failed; server log: logs/evict-node--mha.log",
        "  expected detected within 4 steps: first violation at step 26, 6 steps after the injection at step 20; "
        "the bound is 4",
        "    | kv_canary violation: launch_tag=HEAD_K_FULL fail_reason=chain_hash slot_idx=0 position=40 step=26",
        "    | ... and 11 more such lines in logs/evict-node--mha.log",
    ]


@pytest.mark.parametrize("modes", [("mha",), ("mha", "swa")])
def test_the_heatmap_keeps_its_title_and_legend_inside_the_figure_and_says_why_a_cell_failed(modes):
    results = [late("a-scenario-with-a-rather-long-name", mode) for mode in modes]
    figure = heatmap_figure(results, not_run={("baseline", modes[0])})
    figure.canvas.draw()
    inside = figure.bbox
    title = figure.texts[0]
    assert title.get_text() == "kv-canary detection"
    box = title.get_window_extent()
    assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and box.y1 <= inside.y1
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == [label for _, label in LEGEND]
    box = legend.get_window_extent()
    assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0
    cells = {text.get_text() for text in figure.axes[0].texts}
    assert cells == {"late +2", "not run"}


def test_a_run_that_stopped_early_says_which_pairs_never_ran(tmp_path):
    directory = RunDirectory(tmp_path)
    directory.start(
        RunPlan(
            scenarios=(
                PlannedScenario(name="evict-node", path="/s/evict-node.yaml", sha256="0", modes=("mha", "swa")),
                PlannedScenario(name="baseline", path="/s/baseline.yaml", sha256="1", modes=("mha",)),
            ),
            model_mode="all",
            device="cpu",
            server_command=("python", "-m", "mock_models.server"),
            run_timeout_s=60,
        )
    )
    rendered = render_report(tmp_path)  # nothing finished yet: still a report, of a run that did nothing
    assert (rendered.planned, rendered.not_run, rendered.all_held) == (
        3,
        (("evict-node", "mha"), ("evict-node", "swa"), ("baseline", "mha")),
        False,
    )
    directory.write_result(result("evict-node", "mha"))
    rendered = render_report(tmp_path)
    assert not rendered.all_held and rendered.failed == 0
    markdown = rendered.markdown.read_text()
    assert markdown.startswith(
        "# kv-canary detection report\n\n**Incomplete run: 2 of 3 planned (scenario, mode) pairs never ran "
        f"(evict-node[swa], baseline[mha]); finish them with `kv-canary run --resume --report {tmp_path}`.** "
        "1 of 1 (scenario, mode) pairs held every expectation."
    )
    assert "## Never ran\n\n* evict-node[swa]\n* baseline[mha]\n" in markdown
    report = json.loads(rendered.json.read_text())
    assert report["run"] == {"planned": 3, "complete": False, "not_run": ["evict-node[swa]", "baseline[mha]"]}


def test_results_written_before_the_expected_column_still_read(run_dir):
    path = run_dir / "results" / "evict-node--mha.json"
    payload = json.loads(path.read_text())
    for key in ("expects_detection", "within_steps"):
        del payload["check"][key]
    for outcome in payload["check"]["outcomes"]:
        del outcome["label"], outcome["line_count"]
    path.write_text(json.dumps(payload))
    assert "| evict-node | mha | ? | pass | yes | 3 |" in render_report(run_dir).markdown.read_text()


def test_every_heatmap_cell_is_a_result_or_says_n_a_and_why(tmp_path):
    dsv4_only = dataclasses.replace(
        result("remap-swa", "swa"), not_applicable={"mha": "one pool group, so there is no mapping to remap"}
    )
    results = [result("evict-node", "mha"), result("evict-node", "swa"), dsv4_only]
    figure = heatmap_figure(results)
    cells = {text.get_text() for text in figure.axes[0].texts}
    assert cells == {"+3", "n/a: one pool group,\nso there is no mapping\nto remap"}
    for item in results:
        RunDirectory(tmp_path).write_result(item)
    markdown = render_report(tmp_path).markdown.read_text()
    assert "* remap-swa[mha]: n/a: one pool group, so there is no mapping to remap" in markdown


def test_the_markdown_table_gives_the_first_wrong_output_and_whether_detection_came_by_then(tmp_path):
    wrong = WrongOutput(request="p1:a#0", index=2, step=23, why="token 4, the token oracle's is 5")
    check = dataclasses.replace(
        result("evict-node", "mha").check, first_wrong=wrong, harm_judged=True, detected_before_harm=False
    )
    RunDirectory(tmp_path).write_result(dataclasses.replace(result("evict-node", "mha"), check=check))
    rendered = render_report(tmp_path)
    assert "| first wrong | before harm |" in rendered.markdown.read_text()
    assert "| chain_hash,position | 1.2 | step 23 | no |" in rendered.markdown.read_text()
    (harm,) = json.loads(rendered.json.read_text())["harm"]
    assert (harm["first_wrong_step"], harm["detected_before_harm"], harm["outputs_judged"]) == (23, False, True)


def test_an_engine_bug_and_a_blind_spot_read_as_what_they_are():
    bug = result("bug-x", "mha", latency=None)
    bug = dataclasses.replace(bug, check=dataclasses.replace(bug.check, detected=True, within_steps=None))
    assert (cell_label(bug), bug.check.expected_text()) == ("caught", "detect by harm")
    wrong = WrongOutput(request="r#0", index=0, step=5, why="digest")
    blind = result("blind", "mha", latency=None, expects_detection=False)
    blind = dataclasses.replace(blind, check=dataclasses.replace(blind.check, first_wrong=wrong, harm_judged=True))
    assert (cell_label(blind), blind.check.expected_text()) == ("blind spot", "clean")
    assert cell_label(result("baseline", "mha", latency=None, expects_detection=False)) == "clean"
