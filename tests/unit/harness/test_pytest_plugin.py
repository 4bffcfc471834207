"""The pytest plugin in a sandboxed pytest (pytester): YAML items, readable ids, failures, fixtures, xdist."""

from __future__ import annotations

import shlex
import textwrap
from pathlib import Path

import pytest

from tests.unit.harness.samples import BASELINE_MHA, DETECT_EVICTION, FAKE_SERVER_COMMAND, process_is_gone

pytest_plugins = ["pytester"]

REPO_ROOT = Path(__file__).resolve().parents[3]


def _plugin_args() -> list[str]:
    # The sandbox has no conftest that loads the plugin, and installing kv-canary registers none.
    return ["-p", "harness.pytest_plugin"]


@pytest.fixture
def sandbox(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))  # for xdist workers, which start fresh interpreters
    pytester.makefile(".yaml", **{"scenarios/baseline-mha": BASELINE_MHA, "scenarios/detect-eviction": DETECT_EVICTION})
    pytester.makepyfile(test_unit="def test_unit():\n    pass\n")
    return pytester


# In-process runs drop the modules they import; hypothesis's plugin would re-import hypothesis
# (1.5 s) every time, and the plugin imported above cannot be assertion-rewritten (harmless).
_QUIET = ("-p", "no:hypothesispytest", "-W", "ignore::pytest.PytestAssertRewriteWarning")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(
        *_plugin_args(),
        *_QUIET,
        "--kv-canary-server-command",
        shlex.join(FAKE_SERVER_COMMAND),
        "--kv-canary-run-dir",
        str(pytester.path / "run"),
        *args,
    )


def test_scenarios_are_collected_with_readable_ids_under_e2e(sandbox):
    result = run(sandbox, "-m", "e2e", "--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [
            "scenarios/baseline-mha.yaml::baseline-mha[[]mha[]]",
            "scenarios/detect-eviction.yaml::detect-eviction[[]mha[]]",
            "2/3 tests collected (1 deselected)*",
        ]
    )


def test_model_mode_all_is_the_matrix(sandbox):
    result = run(sandbox, "-m", "e2e", "--model-mode", "all", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*baseline-mha[[]mha[]]", "*detect-eviction[[]mha[]]", "*detect-eviction[[]swa[]]"])


def test_a_run_without_paths_collects_the_unit_tests_and_the_scenarios(sandbox):
    result = run(sandbox, "--model-mode", "all", "--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [
            "scenarios/baseline-mha.yaml::baseline-mha[[]mha[]]",
            "scenarios/detect-eviction.yaml::detect-eviction[[]swa[]]",
            "test_unit.py::test_unit",
            "4 tests collected*",
        ]
    )


def test_scenarios_stay_out_of_a_run_naming_paths_or_deselecting_e2e(sandbox):
    result = run(sandbox, "test_unit.py", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["test_unit.py::test_unit", "1 test collected*"])
    result = run(sandbox, "-m", "not e2e", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["test_unit.py::test_unit", "1 test collected*"])
    assert "yaml" not in result.stdout.str()


def test_a_scenario_named_on_the_command_line_is_collected_without_the_marker(sandbox):
    result = run(sandbox, "scenarios/detect-eviction.yaml", "--model-mode", "swa", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["scenarios/detect-eviction.yaml::detect-eviction[[]swa[]]", "1 test collected*"])


def test_scenario_items_run_and_pass(sandbox):
    result = run(sandbox, "-m", "e2e", "--model-mode", "all")
    result.assert_outcomes(passed=3, deselected=1)
    assert sorted(path.name for path in (sandbox.path / "run" / "results").iterdir()) == [
        "baseline-mha--mha.json",
        "detect-eviction--mha.json",
        "detect-eviction--swa.json",
    ]


def test_a_failing_scenario_shows_the_unmet_expectation_and_its_lines(sandbox, monkeypatch):
    monkeypatch.setenv("FAKE_SERVER_BEHAVIOUR", "dirty")
    result = run(sandbox, "-m", "e2e")
    result.assert_outcomes(failed=2, deselected=1)
    result.stdout.fnmatch_lines(
        [
            "*detect-eviction[[]mha[]] (*detect-eviction.yaml) failed; server log: *detect-eviction--mha.log",
            "  expected no violation before the injection: 1 violations before the injection at step 6*",
            "    | kv_canary violation: launch_tag=HEAD_K_FULL fail_reason=chain_hash+position slot_idx=5 *step=3",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_an_invalid_scenario_is_a_collection_error_naming_file_line_and_key(sandbox):
    sandbox.makefile(".yaml", **{"scenarios/broken": BASELINE_MHA.replace("detected: false", "detected: maybe")})
    result = run(sandbox, "-m", "e2e", "--collect-only")
    result.stdout.fnmatch_lines(["*invalid scenario file:", "*scenarios/broken.yaml:8: expect.detected: *"])
    assert result.ret == pytest.ExitCode.INTERRUPTED


def test_fixtures_start_servers_per_mode_and_stop_them(sandbox):
    sandbox.makepyfile(
        test_e2e_fixtures=textwrap.dedent("""
        import pytest

        pytestmark = pytest.mark.e2e

        def remember(server):
            with open("server-pids.txt", "a") as pids:
                pids.write(f"{server.process.pid}\\n")

        def test_module_server(kv_canary_server, kv_canary_mode):
            remember(kv_canary_server)
            assert kv_canary_server.mode == kv_canary_mode
            kv_canary_server.client.generate([1, 2, 3], 4)
            assert kv_canary_server.client.forward_count() == 5
            assert f"--model-mode {kv_canary_mode}" in kv_canary_server.log_text()

        def test_factory(kv_canary_server_factory, request):
            server = kv_canary_server_factory("mha", {"sweep_interval": 4, "max_total_tokens": 512})
            remember(server)
            assert "--sweep-interval 4 --real-kv partial" in server.log_text()
    """)
    )
    result = run(sandbox, "test_e2e_fixtures.py", "--model-mode", "all", "-v")
    result.stdout.fnmatch_lines(
        [
            "*test_module_server[[]mha[]] PASSED*",
            "*test_module_server[[]swa[]] PASSED*",
            "*test_module_server[[]dsv4[]] PASSED*",
            "*test_factory PASSED*",
        ]
    )
    pids = [int(line) for line in (sandbox.path / "server-pids.txt").read_text().split()]
    assert len(set(pids)) == 4 and all(process_is_gone(pid) for pid in pids)


def test_scenarios_run_in_parallel_under_xdist(sandbox):
    result = run(sandbox, "-m", "e2e", "--model-mode", "all", "-n", "2", "-p", "xdist")
    result.assert_outcomes(passed=3)  # xdist does not report the deselected unit test
