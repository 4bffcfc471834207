"""kv-canary's pytest plugin, loaded only when asked for: ``-p harness.pytest_plugin`` (this repository's conftest.py).

* Every scenario YAML under ``--scenario-dir`` is collected as one test item (marked ``e2e``) per
  selected mode (``--model-mode mha|swa|dsv4|all``), with ids ``<file>::<name>[<mode>]``, when
  the run names no paths (``pytest -n 2 --model-mode all``: unit tests and the scenario matrix
  in one run) or selects ``-m e2e``; a run naming paths (``pytest tests/unit/canary``) or
  deselecting ``-m "not e2e"`` leaves the library out. A YAML file or library folder named on
  the command line is collected in any case; another folder of scenarios gets a hint to name it
  with ``--scenario-dir=DIR``. Scenario names must be unique, as ``kv-canary validate`` demands.
* Fixtures for hand-written e2e tests: ``kv_canary_mode`` (parametrized over the selected modes),
  ``kv_canary_server`` (one server per module and mode), ``kv_canary_server_factory`` (servers
  per test, with chosen engine settings), ``kv_canary_run_dir`` and ``kv_canary_run_options``
  (the command-line options as ``RunOptions``, for ``run_scenario``).
* Works under ``pytest -n auto``: every server gets its own free port and log file, and every
  worker writes into the controller's run directory.
* Results go to ``--kv-canary-run-dir`` (earlier results there stay, re-run pairs are replaced,
  as with ``kv-canary run --report``), by default to ``.pytest_cache/d/kv-canary``, which holds
  the last session's only: ``kv-canary report`` on it reports that session.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness.report import RunDirectory
from harness.run_result import RunResult
from harness.runner import DEFAULT_SERVER_COMMAND, RunOptions, ServerProcess, engine_server, run_scenario
from harness.runner.engine_client import EngineClient
from harness.runner.server_program import ServerCommandError, split_server_command
from harness.scenario import MODEL_MODES, LoadedScenario, ScenarioValidationError, load_scenario_file
from harness.scenario.loader import SCENARIO_SUFFIXES
from harness.scenario.model import EngineSettings
from harness.scenario.problems import ScenarioProblem

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr, TracebackStyle  # the types of pytest's own repr_failure

_E2E_MARKER = "e2e: end-to-end runs against a mock server (selected with -m e2e)"
_RUN_DIR = pytest.StashKey[Path]()
_SERVER_COMMAND = pytest.StashKey[tuple[str, ...]]()
_SCENARIO_NAMES = pytest.StashKey[dict[str, LoadedScenario]]()  # the first file collected with each name
_WORKER_RUN_DIR = "kv_canary_run_dir"  # xdist workerinput key: the controller's run directory


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kv-canary", "kv-canary end-to-end scenarios")
    group.addoption(
        "--model-mode",
        choices=[*MODEL_MODES, "all"],
        default="mha",
        help="model mode(s) to run scenarios and e2e tests in; 'all' is the CI matrix (default: mha)",
    )
    group.addoption(
        "--scenario-dir",
        type=Path,
        default=None,
        help="scenario library collected with -m e2e (default: <rootdir>/scenarios); write --scenario-dir=DIR, "
        "one word: pytest finds its rootdir before plugins load and would take a separate DIR for a test path",
    )
    group.addoption("--kv-canary-device", choices=["cpu", "cuda"], default="cpu", help="device for the server")
    group.addoption(
        "--kv-canary-server-command",
        default=shlex.join(DEFAULT_SERVER_COMMAND),
        help="command that starts the server; the engine flags are appended",
    )
    group.addoption(
        "--kv-canary-run-dir",
        type=Path,
        default=None,
        help="where results and server logs go, ready for `kv-canary report` (default: .pytest_cache/d/kv-canary)",
    )
    group.addoption(
        "--kv-canary-timeout", type=float, default=600.0, help="wall-clock budget per scenario run, in seconds"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _E2E_MARKER)
    _refuse_scenario_dir_in_two_words(config)
    try:
        config.stash[_SERVER_COMMAND] = split_server_command(config.getoption("--kv-canary-server-command"))
    except ServerCommandError as error:
        raise pytest.UsageError(str(error).replace("--server-command", "--kv-canary-server-command")) from None
    config.stash[_SCENARIO_NAMES] = {}
    worker_input = getattr(config, "workerinput", None)
    config.stash[_RUN_DIR] = Path(worker_input[_WORKER_RUN_DIR]) if worker_input else _session_run_dir(config)
    scenario_dir = _scenario_dir(config)
    if (
        _library_collected(config)
        and config.args_source is not pytest.Config.ArgsSource.ARGS
        and scenario_dir.is_dir()
        and not any(_within(scenario_dir, Path(arg)) for arg in config.args)
    ):
        # The library sits outside testpaths; a run without paths, or `pytest -m e2e`, still runs it.
        config.args.append(str(scenario_dir))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:  # xdist's WorkerController
    """xdist, on the controller: every worker writes into the controller's run directory."""
    node.workerinput[_WORKER_RUN_DIR] = str(node.config.stash[_RUN_DIR])


def _refuse_scenario_dir_in_two_words(config: pytest.Config) -> None:
    """pytest finds its rootdir and configuration before plugins load, so the DIR of ``--scenario-dir DIR``
    is taken for a test path then: the rootdir moves and the project's settings (addopts) are lost."""
    given = [*shlex.split(os.environ.get("PYTEST_ADDOPTS", "")), *config.invocation_params.args]
    if "--scenario-dir" in given:
        raise pytest.UsageError(
            "--scenario-dir DIR (two words): pytest took DIR for a test path while finding its rootdir, before "
            f"plugins load, and so chose {config.rootpath} and dropped the project's configuration; "
            "write --scenario-dir=DIR"
        )


def _session_run_dir(config: pytest.Config) -> Path:
    chosen: Path | None = config.getoption("--kv-canary-run-dir")
    if chosen is not None:
        return chosen
    cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
    if cache is None:
        return Path(tempfile.mkdtemp(prefix="kv-canary-"))
    run_dir: Path = cache.mkdir("kv-canary")
    for entry in run_dir.iterdir():  # the last session's results only: earlier ones would mix into its report
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return run_dir


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    """A hint for a folder named on the command line that holds scenario files outside the library."""
    if config.args_source is not pytest.Config.ArgsSource.ARGS:
        return []
    library = _scenario_dir(config)
    hints = []
    for arg in config.args:
        folder = config.invocation_params.dir / arg.split("::")[0]
        if not folder.is_dir() or _within(folder, library) or any(_within(item.path, folder) for item in items):
            continue
        scenarios = [path for path in folder.rglob("*") if path.suffix in SCENARIO_SUFFIXES and path.is_file()]
        if scenarios:
            hints.append(
                f"kv-canary: {arg} holds {len(scenarios)} scenario file(s) but is not the scenario library "
                f"({library}), so none was collected; run them with --scenario-dir={arg} -m e2e, or name the files"
            )
    return hints


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in SCENARIO_SUFFIXES:
        return None
    config = parent.config
    in_library = _within(file_path, _scenario_dir(config))
    if (in_library and _library_collected(config)) or _given_explicitly(file_path, config):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kv_canary_mode" in metafunc.fixturenames:
        metafunc.parametrize("kv_canary_mode", selected_modes(metafunc.config), scope="module")


def selected_modes(config: pytest.Config) -> tuple[str, ...]:
    chosen = config.getoption("--model-mode")
    return MODEL_MODES if chosen == "all" else (chosen,)


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        loaded = load_scenario_file(self.path)
        first = self.config.stash[_SCENARIO_NAMES].setdefault(loaded.scenario.name, loaded)
        if first.path != loaded.path:
            # As `kv-canary validate` and `run` refuse them: the second's results would overwrite the first's.
            raise ScenarioValidationError(
                [
                    ScenarioProblem(
                        path=loaded.path,
                        line=loaded.name_line,
                        key="name",
                        message=f"'{loaded.scenario.name}' is already the name of {first.path}:{first.name_line}; "
                        "names must be unique",
                    )
                ]
            )
        for mode in loaded.scenario.model_modes:
            if mode in selected_modes(self.config):
                item = ScenarioItem.from_parent(self, name=f"{loaded.scenario.name}[{mode}]", loaded=loaded, mode=mode)
                item.add_marker(pytest.mark.e2e)
                yield item

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: TracebackStyle | None = None,  # Node's signature; a collector's report takes no style
    ) -> str | TerminalRepr:
        if isinstance(excinfo.value, ScenarioValidationError):
            return f"invalid scenario file:\n{excinfo.value}"
        return super().repr_failure(excinfo)


class ScenarioFailed(Exception):
    def __init__(self, result: RunResult) -> None:
        super().__init__(result.failure_message())
        self.result = result


class ScenarioItem(pytest.Item):
    def __init__(self, *, loaded: LoadedScenario, mode: str, parent: pytest.Collector, **kwargs: Any) -> None:
        super().__init__(parent=parent, nodeid=_parametrized_id(parent, loaded.scenario.name, mode), **kwargs)
        self.loaded = loaded
        self.mode = mode

    def runtest(self) -> None:
        run_dir = RunDirectory(_run_dir(self.config))
        result = run_scenario(self.loaded, self.mode, _run_options(self.config, run_dir.logs_dir))
        run_dir.write_result(result)
        self.user_properties.append(("kv_canary_result", str(run_dir.results_dir)))
        if not result.passed:
            raise ScenarioFailed(result)

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: TracebackStyle | None = None
    ) -> str | TerminalRepr:
        if isinstance(excinfo.value, ScenarioFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"scenario {self.name}"


def _parametrized_id(parent: pytest.Collector, name: str, mode: str) -> Any:
    """``<file>::<name>[<mode>]`` with the mode as the id's parameters. pytest 9.2 compares structured
    ids, and parses the ids ``--lf`` caches that way; an older pytest (ids are strings) computes it."""
    parent_id = getattr(parent, "id", None)
    if parent_id is None or not hasattr(parent_id, "with_params"):
        return None
    return parent_id.child(name).with_params(mode)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class KvCanaryServer:
    """A started server: its process (log, port), an HTTP client for it and its model mode."""

    process: ServerProcess
    client: EngineClient
    mode: str

    def log_text(self) -> str:
        return self.process.log_text()


@pytest.fixture(scope="session")
def kv_canary_run_dir(pytestconfig: pytest.Config) -> Path:
    return _run_dir(pytestconfig)


@pytest.fixture(scope="session")
def kv_canary_run_options(pytestconfig: pytest.Config, kv_canary_run_dir: Path) -> RunOptions:
    """How scenario runs start servers (device, server command, timeout), logging under the run dir."""
    return _run_options(pytestconfig, kv_canary_run_dir / "logs")


@pytest.fixture
def kv_canary_server_factory(
    request: pytest.FixtureRequest, kv_canary_run_dir: Path
) -> Iterator[Callable[..., KvCanaryServer]]:
    """``start(mode, engine={...})`` -> a healthy server, stopped when the test ends."""
    started: list[KvCanaryServer] = []

    def start(mode: str, engine: EngineSettings | Mapping[str, object] | None = None) -> KvCanaryServer:
        server = _start_server(
            request.config, kv_canary_run_dir, mode, engine, log_name=f"{request.node.nodeid}-{len(started)}"
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.process.stop()


@pytest.fixture(scope="module")
def kv_canary_server(
    request: pytest.FixtureRequest, kv_canary_mode: str, kv_canary_run_dir: Path
) -> Iterator[KvCanaryServer]:
    """One server with default engine settings per test module and selected mode."""
    server = _start_server(
        request.config, kv_canary_run_dir, kv_canary_mode, None, log_name=f"{request.node.nodeid}-{kv_canary_mode}"
    )
    yield server
    server.process.stop()


def _start_server(
    config: pytest.Config,
    run_dir: Path,
    mode: str,
    engine: EngineSettings | Mapping[str, object] | None,
    *,
    log_name: str,
) -> KvCanaryServer:
    settings = engine if isinstance(engine, EngineSettings) else EngineSettings.model_validate(dict(engine or {}))
    options = _run_options(config, run_dir / "logs")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    process = engine_server(
        settings,
        mode,
        options,
        log_path=options.log_dir / worker / (re.sub(r"[^\w.-]+", "_", log_name) + ".log"),
        swa_divergence_interval=settings.swa_divergence_interval,
    )
    process.start()
    return KvCanaryServer(
        process=process, client=EngineClient(process.base_url, timeout_s=options.request_timeout_s), mode=mode
    )


def _run_options(config: pytest.Config, log_dir: Path) -> RunOptions:
    return RunOptions(
        log_dir=log_dir,
        device=config.getoption("--kv-canary-device"),
        server_command=config.stash[_SERVER_COMMAND],
        run_timeout_s=config.getoption("--kv-canary-timeout"),
    )


def _run_dir(config: pytest.Config) -> Path:
    return config.stash[_RUN_DIR]


def _scenario_dir(config: pytest.Config) -> Path:
    chosen: Path | None = config.getoption("--scenario-dir")
    if chosen is None:
        return config.rootpath / "scenarios"
    return chosen if chosen.is_absolute() else config.invocation_params.dir / chosen


def _library_collected(config: pytest.Config) -> bool:
    """Whether the scenario library is collected: ``-m`` selects ``e2e``, or the run names no paths
    and ``-m`` does not deselect ``e2e``."""
    selected, deselected = _e2e_in_markexpr(config)
    return selected or (config.args_source is not pytest.Config.ArgsSource.ARGS and not deselected)


def _e2e_in_markexpr(config: pytest.Config) -> tuple[bool, bool]:
    """Whether ``-m`` names ``e2e`` other than as ``not e2e``, and whether it names ``not e2e``."""
    tokens = re.findall(r"[\w-]+|[()]", config.getoption("markexpr") or "")
    negated = [token == "e2e" and index > 0 and tokens[index - 1] == "not" for index, token in enumerate(tokens)]
    return (any(token == "e2e" and not neg for token, neg in zip(tokens, negated, strict=True)), any(negated))


def _given_explicitly(path: Path, config: pytest.Config) -> bool:
    """The file itself, or a folder of the scenario library, was named on the command line."""
    if config.args_source is not pytest.Config.ArgsSource.ARGS:
        return False
    library = _scenario_dir(config)
    for arg in config.args:
        named = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if named == path.resolve() or (named.is_dir() and _within(named, library) and _within(path, named)):
            return True
    return False


def _within(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())
