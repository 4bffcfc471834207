"""The hosted-CI workflow runs what .ci/run runs: every model mode's e2e matrix and the unit tests."""

from __future__ import annotations

import pathlib

import yaml

from harness.scenario import MODEL_MODES

WORKFLOW = pathlib.Path(__file__).resolve().parents[3] / ".github" / "workflows" / "ci.yml"


def test_the_e2e_matrix_covers_every_model_mode() -> None:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    assert sorted(jobs["e2e"]["strategy"]["matrix"]["model-mode"]) == sorted(MODEL_MODES)
    e2e_commands = [step.get("run", "") for step in jobs["e2e"]["steps"]]
    assert any("-m e2e --model-mode ${{ matrix.model-mode }}" in command for command in e2e_commands)


def test_the_unit_job_installs_sglang_and_leaves_out_only_e2e_slow_and_gpu() -> None:
    steps = [step.get("run", "") for step in yaml.safe_load(WORKFLOW.read_text())["jobs"]["unit"]["steps"]]
    assert "bash .ci/install-sglang" in steps
    assert any('-m "not e2e and not slow and not gpu"' in command for command in steps)


def test_the_static_checks_run_in_hosted_ci_as_in_ci_run() -> None:
    steps = [step.get("run", "") for step in yaml.safe_load(WORKFLOW.read_text())["jobs"]["check"]["steps"]]
    assert "bash .ci/check" in steps
    ci_run = (WORKFLOW.parents[2] / ".ci" / "run").read_text().splitlines()
    assert "bash .ci/check" in ci_run
    assert ci_run.index("bash .ci/check") < next(i for i, line in enumerate(ci_run) if "pytest" in line)


def test_the_detection_report_step_runs_the_library_pairs_in_parallel_per_mode() -> None:
    steps = [step.get("run", "") for step in yaml.safe_load(WORKFLOW.read_text())["jobs"]["e2e"]["steps"]]
    assert any("kv-canary run scenarios/ -j 2 --model-mode ${{ matrix.model-mode }}" in command for command in steps), (
        steps
    )
