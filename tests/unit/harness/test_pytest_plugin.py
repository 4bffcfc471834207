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


def test_last_failed_reruns_only_the_scenarios_that_failed(sandbox, monkeypatch):
    monkeypatch.setenv("FAKE_SERVER_BEHAVIOUR", "miss")  # detect-eviction fails, the baseline passes
    run(sandbox, "-m", "e2e", "--model-mode", "all").assert_outcomes(passed=1, failed=2, deselected=1)
    rerun = run(sandbox, "-m", "e2e", "--model-mode", "all", "--lf")
    rerun.stdout.fnmatch_lines(["run-last-failure: rerun previous 2 failures*"])
    rerun.assert_outcomes(failed=2)
    monkeypatch.setenv("FAKE_SERVER_BEHAVIOUR", "detect")
    run(sandbox, "-m", "e2e", "--model-mode", "all", "--lf").assert_outcomes(passed=2)


def test_two_scenario_files_with_one_name_are_refused_before_anything_runs(sandbox):
    sandbox.makefile(".yaml", **{"scenarios/zz-copy": BASELINE_MHA})
    result = run(sandbox, "-m", "e2e")
    result.stdout.fnmatch_lines(
        [
            "*invalid scenario file:",
            "*scenarios/zz-copy.yaml:1: name: 'baseline-mha' is already the name of *scenarios/baseline-mha.yaml:1; "
            "names must be unique",
        ]
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert not (sandbox.path / "run" / "results").exists()


def test_scenario_dir_in_two_words_is_refused_and_in_one_word_keeps_the_projects_configuration(sandbox):
    sandbox.makeini('[pytest]\naddopts = -m "not slow"\nmarkers = slow\n')
    sandbox.makepyfile(test_slow="import pytest\n\n@pytest.mark.slow\ndef test_slow():\n    pass\n")
    library = sandbox.mkdir("elsewhere")
    (library / "detect-eviction.yaml").write_text(DETECT_EVICTION)
    refused = run(sandbox, "--scenario-dir", str(library), "--collect-only", "-q")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*--scenario-dir DIR (two words)*write --scenario-dir=DIR"])
    kept = run(sandbox, f"--scenario-dir={library}", "--collect-only", "-q")
    kept.stdout.fnmatch_lines(["elsewhere/detect-eviction.yaml::detect-eviction[[]mha[]]", "*(1 deselected)*"])
    assert "test_slow" not in kept.stdout.str()


def test_the_default_results_folder_holds_the_last_session_only(sandbox):
    def session(*args: str) -> pytest.RunResult:
        return sandbox.runpytest(
            *_plugin_args(), *_QUIET, "--kv-canary-server-command", shlex.join(FAKE_SERVER_COMMAND), *args
        )

    session("-m", "e2e").assert_outcomes(passed=2, deselected=1)
    (sandbox.path / "scenarios" / "baseline-mha.yaml").unlink()
    session("-m", "e2e").assert_outcomes(passed=1, deselected=1)
    results = sandbox.path / ".pytest_cache" / "d" / "kv-canary" / "results"
    assert [path.name for path in results.iterdir()] == ["detect-eviction--mha.json"]


def test_the_default_results_folder_gathers_every_xdist_workers_results(sandbox):
    result = sandbox.runpytest(
        *_plugin_args(),
        *_QUIET,
        "--kv-canary-server-command",
        shlex.join(FAKE_SERVER_COMMAND),
        "-m",
        "e2e",
        "--model-mode",
        "all",
        "-n",
        "2",
        "-p",
        "xdist",
    )
    result.assert_outcomes(passed=3)
    results = sandbox.path / ".pytest_cache" / "d" / "kv-canary" / "results"
    assert len(list(results.iterdir())) == 3


def test_a_scenario_folder_outside_the_library_gets_a_hint_and_its_files_are_collected(sandbox):
    folder = sandbox.mkdir("my-scenarios")
    (folder / "detect-eviction-copy.yaml").write_text(DETECT_EVICTION.replace("detect-eviction", "copy"))
    hinted = run(sandbox, "my-scenarios", "--collect-only", "-q")
    hinted.stdout.fnmatch_lines(
        ["kv-canary: my-scenarios holds 1 scenario file(s) but is not the scenario library (*scenarios)*"]
    )
    assert hinted.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    one_file = run(sandbox, "my-scenarios/detect-eviction-copy.yaml", "--collect-only", "-q")
    one_file.stdout.fnmatch_lines(["my-scenarios/detect-eviction-copy.yaml::copy[[]mha[]]", "1 test collected*"])


def test_a_server_command_that_cannot_start_anything_is_a_usage_error(sandbox):
    result = sandbox.runpytest(*_plugin_args(), *_QUIET, "--kv-canary-server-command", "'oops", "-m", "e2e")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(['*--kv-canary-server-command "\'oops": No closing quotation*'])
