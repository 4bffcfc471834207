"""kv-canary's pytest plugin, loaded only when asked for: ``-p harness.pytest_plugin`` (this repository's conftest.py).

* Every scenario YAML under ``--scenario-dir`` is collected as one test item (marked ``e2e``) per
  selected mode (``--model-mode mha|swa|dsv4|all``), with ids ``<file>::<name>[<mode>]``, when
  the run names no paths (``pytest -n 2 --model-mode all``: unit tests and the scenario matrix
  in one run) or selects ``-m e2e``; a run naming paths (``pytest tests/unit/canary``) or
  deselecting ``-m "not e2e"`` leaves the library out. A YAML file or library folder named on
  the command line is collected in any case.
* Fixtures for hand-written e2e tests: ``kv_canary_mode`` (parametrized over the selected modes),
  ``kv_canary_server`` (one server per module and mode), ``kv_canary_server_factory`` (servers
  per test, with chosen engine settings), ``kv_canary_run_dir`` and ``kv_canary_run_options``
  (the command-line options as ``RunOptions``, for ``run_scenario``).
* Works under ``pytest -n auto``: every server gets its own free port and log file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from harness.report import RunDirectory
from harness.run_result import RunResult
from harness.runner import DEFAULT_SERVER_COMMAND, RunOptions, ServerProcess, engine_server, run_scenario
from harness.runner.engine_client import EngineClient
from harness.scenario import MODEL_MODES, LoadedScenario, ScenarioValidationError, load_scenario_file
from harness.scenario.loader import SCENARIO_SUFFIXES
from harness.scenario.model import EngineSettings

_E2E_MARKER = "e2e: end-to-end runs against a mock server (selected with -m e2e)"


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
        help="scenario library collected with -m e2e (default: <rootdir>/scenarios)",
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
    scenario_dir = _scenario_dir(config)
    if (
        _library_collected(config)
        and config.args_source is not pytest.Config.ArgsSource.ARGS
        and scenario_dir.is_dir()
        and not any(_within(scenario_dir, Path(arg)) for arg in config.args)
    ):
        # The library sits outside testpaths; a run without paths, or `pytest -m e2e`, still runs it.
        config.args.append(str(scenario_dir))


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
        for mode in loaded.scenario.model_modes:
            if mode in selected_modes(self.config):
                item = ScenarioItem.from_parent(self, name=f"{loaded.scenario.name}[{mode}]", loaded=loaded, mode=mode)
                item.add_marker(pytest.mark.e2e)
                yield item

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str:
        if isinstance(excinfo.value, ScenarioValidationError):
            return f"invalid scenario file:\n{excinfo.value}"
        return super().repr_failure(excinfo, style)


class ScenarioFailed(Exception):
    def __init__(self, result: RunResult) -> None:
        super().__init__(result.failure_message())
        self.result = result


class ScenarioItem(pytest.Item):
    def __init__(self, *, loaded: LoadedScenario, mode: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.loaded = loaded
        self.mode = mode

    def runtest(self) -> None:
        run_dir = RunDirectory(_run_dir(self.config))
        result = run_scenario(self.loaded, self.mode, _run_options(self.config, run_dir.logs_dir))
        run_dir.write_result(result)
        self.user_properties.append(("kv_canary_result", str(run_dir.results_dir)))
        if not result.passed:
            raise ScenarioFailed(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str:
        if isinstance(excinfo.value, ScenarioFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"scenario {self.name}"


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
        server_command=tuple(shlex.split(config.getoption("--kv-canary-server-command"))),
        run_timeout_s=config.getoption("--kv-canary-timeout"),
    )


def _run_dir(config: pytest.Config) -> Path:
    chosen = config.getoption("--kv-canary-run-dir")
    if chosen is not None:
        return chosen
    cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
    return cache.mkdir("kv-canary") if cache is not None else Path(tempfile.mkdtemp(prefix="kv-canary-"))


def _scenario_dir(config: pytest.Config) -> Path:
    chosen = config.getoption("--scenario-dir")
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
    return (any(token == "e2e" and not neg for token, neg in zip(tokens, negated)), any(negated))


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
