"""The kv-canary command line: exit status 0 held, 1 failed, 2 bad input, with the fake server."""

from __future__ import annotations

import importlib.metadata
import json
import shlex
import sys
import types
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import harness.cli
from harness.cli import cli
from harness.scenario.json_schema import render_json_schema
from tests.unit.harness.samples import BASELINE_MHA, DETECT_EVICTION, FAKE_SERVER_COMMAND

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def invoke():
    def run_cli(*args: object):
        return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)

    return run_cli


@pytest.fixture
def library(write_scenario) -> Path:
    write_scenario(BASELINE_MHA, "library/baseline-mha.yaml")
    return write_scenario(DETECT_EVICTION, "library/detect-eviction.yaml").parent


def run_args(*paths: Path, report: Path) -> list[object]:
    return ["run", *paths, "--report", report, "--server-command", shlex.join(FAKE_SERVER_COMMAND), "--timeout", 30]


def test_run_exits_0_when_every_expectation_held(invoke, library, tmp_path):
    result = invoke(*run_args(library, report=tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert "3 passed, 0 failed" in result.output
    assert sorted(path.name for path in (tmp_path / "run" / "results").iterdir()) == [
        "baseline-mha--mha.json",
        "detect-eviction--mha.json",
        "detect-eviction--swa.json",
    ]
    assert (tmp_path / "run" / "report.md").is_file() and (tmp_path / "run" / "heatmap.png").is_file()
    assert (tmp_path / "run" / "logs" / "detect-eviction--swa.log").is_file()


def test_run_exits_1_when_an_expectation_failed(invoke, library, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SERVER_BEHAVIOUR", "miss")
    result = invoke(*run_args(library, report=tmp_path / "run"), "--model-mode", "swa")
    assert result.exit_code == 1, result.output
    assert "detect-eviction[swa]" in result.output and "expected detected within 4 steps" in result.output
    assert "skipping 1 scenario(s) without mode swa: baseline-mha" in result.output


def test_run_exits_2_on_an_invalid_scenario_before_running_anything(invoke, write_scenario, tmp_path):
    bad = write_scenario(BASELINE_MHA.replace("model_modes: [mha]", "model_modes: [mla]"))
    result = invoke(*run_args(bad, report=tmp_path / "run"))
    assert result.exit_code == 2
    assert f"{bad}:3: model_modes[0]: Input should be 'mha', 'swa' or 'dsv4' (got 'mla')" in result.output
    assert not (tmp_path / "run").exists()


def test_run_exits_2_when_no_scenario_lists_the_mode(invoke, write_scenario, tmp_path):
    result = invoke(*run_args(write_scenario(BASELINE_MHA), report=tmp_path / "run"), "--model-mode", "dsv4")
    assert result.exit_code == 2
    assert "none of the 1 scenario(s) lists mode dsv4; nothing to run." in result.output


def test_validate_exit_status(invoke, library, tmp_path):
    assert invoke("validate", library).output == "2 scenario(s), 3 (scenario, mode) pair(s): all valid.\n"
    missing = invoke("validate", tmp_path / "missing.yaml")
    assert missing.exit_code == 2 and "no such file or directory" in missing.output


def test_list_shows_modes_and_fault_kinds(invoke, library):
    lines = invoke("list", "--dir", library).output.splitlines()
    assert [line.split() for line in lines] == [
        ["name", "modes", "fault", "expect"],
        ["baseline-mha", "mha", "none", "clean"],
        ["detect-eviction", "mha,swa", "evict_radix_node", "detected"],
    ]


def test_report_exit_status_follows_the_results(invoke, library, tmp_path, monkeypatch):
    assert invoke("report", tmp_path / "nothing-here").exit_code == 2
    monkeypatch.setenv("FAKE_SERVER_BEHAVIOUR", "dirty")
    invoke(*run_args(library, report=tmp_path / "run"))
    rerendered = invoke("report", tmp_path / "run")
    assert rerendered.exit_code == 1
    assert json.loads((tmp_path / "run" / "report.json").read_text())["summary"]["failed"] >= 1


def test_the_committed_json_schema_is_up_to_date():
    committed = REPO_ROOT / "scenarios" / "schema.json"
    assert committed.read_text() == render_json_schema(), "run `python -m harness schema` and commit the file"


def test_schema_check_exits_1_on_a_stale_file(invoke, tmp_path):
    stale = tmp_path / "schema.json"
    stale.write_text("{}\n")
    assert invoke("schema", "--output", stale, "--check").exit_code == 1
    assert invoke("schema", "--output", stale).exit_code == 0
    assert invoke("schema", "--output", stale, "--check").exit_code == 0


def test_serve_without_the_mock_server_says_so(invoke, monkeypatch):
    monkeypatch.setitem(sys.modules, "mock_models.server.main", None)  # makes the import fail
    result = invoke("serve", "--model-mode", "swa")
    assert result.exit_code == 2
    assert "mock_models.server.main.serve_command cannot be imported" in result.output


def test_serve_runs_the_mock_servers_command(invoke, monkeypatch):
    @click.command()
    @click.option("--model-mode")
    def serve_command(model_mode: str) -> None:
        click.echo(f"serving {model_mode}")

    module = types.ModuleType("mock_models.server.main")
    module.serve_command = serve_command
    monkeypatch.setitem(sys.modules, "mock_models.server.main", module)
    assert invoke("serve", "--model-mode", "swa").output == "serving swa\n"


def test_ctrl_c_reports_the_finished_pairs_and_exits_130(invoke, library, tmp_path, monkeypatch):
    real_run = harness.cli.run_scenario
    calls = []

    def interrupt_the_second_pair(*args: object):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(*args)

    monkeypatch.setattr(harness.cli, "run_scenario", interrupt_the_second_pair)
    result = invoke(*run_args(library, report=tmp_path / "run"))
    assert result.exit_code == 130
    assert "1 passed, 0 failed" in result.output
    assert "interrupted after 1 of 3 pair(s); every server was stopped." in result.output


def one_line_bad_input(result) -> str:
    """The single line a bad input is answered with (exit status 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = result.output.splitlines()
    return line


@pytest.mark.parametrize(
    ("server_command", "message"),
    [
        ("", "Error: --server-command is empty; give the command that starts a server"),
        ("'oops", 'Error: --server-command "\'oops": No closing quotation; it is split as a shell would'),
        ("no-such-program --flag", "Error: --server-command: program 'no-such-program' not found"),
    ],
)
def test_run_refuses_a_server_command_that_cannot_start_anything(invoke, library, tmp_path, server_command, message):
    result = invoke("run", library, "--report", tmp_path / "run", "--server-command", server_command)
    assert one_line_bad_input(result).startswith(message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["/dev/null", "file/run"])
def test_run_refuses_a_report_directory_it_cannot_create(invoke, library, tmp_path, where):
    (tmp_path / "file").write_text("a file, not a directory\n")
    report = Path(where) if where.startswith("/") else tmp_path / where
    line = one_line_bad_input(invoke(*run_args(library, report=report)))
    assert line.startswith(f"Error: --report: {report} cannot be a run directory (Not a directory: ")


def test_schema_into_a_path_it_cannot_create_is_bad_input(invoke, tmp_path):
    (tmp_path / "file").write_text("")
    line = one_line_bad_input(invoke("schema", "--output", tmp_path / "file" / "schema.json"))
    assert line.startswith(f"Error: --output {tmp_path / 'file' / 'schema.json'}: cannot write it (")


def test_schema_goes_to_the_library_wherever_it_runs_and_to_stdout_with_a_dash(invoke, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("schema", "--check").output == f"{REPO_ROOT / 'scenarios' / 'schema.json'} is up to date.\n"
    assert invoke("schema", "--output", "-").output == render_json_schema()
    assert not (tmp_path / "scenarios").exists() and not (tmp_path / "-").exists()


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"kv-canary {importlib.metadata.version('kv-canary')}\n"


def test_resume_refuses_what_it_cannot_resume(invoke, library, tmp_path):
    assert one_line_bad_input(invoke("run", "--resume")).startswith("Error: --resume needs --report DIR")
    assert one_line_bad_input(invoke("run", "--resume", "--report", tmp_path)).startswith(
        f"Error: {tmp_path} has no run.json"
    )
    invoke(*run_args(library, report=tmp_path / "run"), "--model-mode", "mha")
    line = one_line_bad_input(invoke("run", "--resume", "--report", tmp_path / "run", library, "--device", "cuda"))
    assert line.startswith("Error: --resume finishes the run with the scenarios and settings in ")
    assert line.endswith("drop SCENARIOS, --device")
    (library / "baseline-mha.yaml").write_text(BASELINE_MHA.replace("A clean run.", "Edited."))
    assert one_line_bad_input(invoke("run", "--resume", "--report", tmp_path / "run")).startswith(
        f"Error: {(library / 'baseline-mha.yaml').resolve()} changed since the run started"
    )


def test_resume_after_ctrl_c_runs_the_rest_and_matches_an_uninterrupted_run(invoke, library, tmp_path, monkeypatch):
    uninterrupted = invoke(*run_args(library, report=tmp_path / "whole"))
    assert uninterrupted.exit_code == 0
    real_run = harness.cli.run_scenario
    calls = []

    def interrupt_the_second_pair(*args: object):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(*args)

    monkeypatch.setattr(harness.cli, "run_scenario", interrupt_the_second_pair)
    interrupted = invoke(*run_args(library, report=tmp_path / "resumed"))
    assert interrupted.exit_code == 130
    assert f"finish them with `kv-canary run --resume --report {tmp_path / 'resumed'}`" in interrupted.output
    assert invoke("report", tmp_path / "resumed").exit_code == 1  # incomplete is not "every expectation held"
    monkeypatch.setattr(harness.cli, "run_scenario", real_run)
    resumed = invoke("run", "--resume", "--report", tmp_path / "resumed")
    assert resumed.exit_code == 0, resumed.output
    assert "3 passed, 0 failed" in resumed.output
    assert comparable_report(tmp_path / "resumed") == comparable_report(tmp_path / "whole")


def comparable_report(run_dir: Path) -> dict:
    """report.json without what differs between two runs of the same pairs: wall times and paths."""
    report = json.loads((run_dir / "report.json").read_text())
    for row in report["rows"]:
        row.pop("wall_time_s"), row.pop("log_path")
    return report


def _comparable(run_dir: Path) -> list[dict[str, object]]:
    """The run's report rows without what differs between any two runs (wall time, where the logs are)."""
    rows = json.loads((run_dir / "report.json").read_text())["rows"]
    return [{key: value for key, value in row.items() if key not in ("wall_time_s", "log_path")} for row in rows]


def test_run_with_jobs_runs_pairs_in_parallel_with_the_results_of_a_serial_run(invoke, library, tmp_path):
    serial = invoke(*run_args(library, report=tmp_path / "serial"))
    parallel = invoke(*run_args(library, report=tmp_path / "parallel"), "-j", "3")
    assert serial.exit_code == parallel.exit_code == 0, parallel.output
    assert _comparable(tmp_path / "parallel") == _comparable(tmp_path / "serial")
    assert len(_comparable(tmp_path / "parallel")) == 3
    assert invoke(*run_args(library, report=tmp_path / "bad"), "-j", "0").exit_code == 2


def test_the_report_names_every_mode_a_scenario_does_not_run_in_and_why(invoke, write_scenario, tmp_path):
    text = DETECT_EVICTION.replace(
        "model_modes: [mha, swa]", 'model_modes: [mha, swa]\nnot_applicable:\n  dsv4: "a reason"'
    )
    scenario = write_scenario(text, "library/detect-eviction.yaml")
    assert invoke(*run_args(scenario, report=tmp_path / "run")).exit_code == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["not_applicable"] == [{"scenario": "detect-eviction", "mode": "dsv4", "reason": "a reason"}]
    assert "* detect-eviction[dsv4]: n/a: a reason" in (tmp_path / "run" / "report.md").read_text()
