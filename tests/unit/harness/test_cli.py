"""The kv-canary command line: exit status 0 held, 1 failed, 2 bad input, with the fake server."""

from __future__ import annotations

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
