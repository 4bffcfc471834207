"""The ``kv-canary`` command line.

Exit status: 0 every expectation held, 1 an expectation failed, 2 bad input (invalid scenarios,
missing files, nothing to run); 130 when interrupted.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import importlib.metadata
import shlex
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import click

from harness.report import (
    RenderedReport,
    RunDirectory,
    RunDirectoryError,
    RunPlan,
    incomplete_summary,
    pair_id,
    render_report,
    terminal_table,
)
from harness.run_result import RunResult
from harness.runner import DEFAULT_SERVER_COMMAND, RunOptions, run_scenario
from harness.runner.safety_net import stop_all, termination_signals_exit
from harness.runner.scenario_run import EngineTarget
from harness.runner.server_program import ServerCommandError, check_server_program, split_server_command
from harness.scenario import MODEL_MODES, LoadedScenario, Scenario, ScenarioValidationError, load_scenarios
from harness.scenario.json_schema import SCHEMA_FILE, render_json_schema
from harness.text_table import aligned_columns

EXIT_HELD, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_SCENARIO_DIR = Path("scenarios")
# The scenario library's schema, found from the package, not from the directory the command runs in.
LIBRARY_SCHEMA_FILE = Path(__file__).resolve().parent.parent / SCHEMA_FILE


class _KvCanaryGroup(click.Group):
    """Resolves ``serve`` lazily: it lives in mock_models, which the other commands must not need."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "serve"])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name != "serve":
            return super().get_command(ctx, name)
        try:
            from mock_models.server.main import serve_command
        except ImportError as error:
            return _serve_unavailable(error)
        return serve_command


def _serve_unavailable(error: ImportError) -> click.Command:
    reason = f"mock_models.server.main.serve_command cannot be imported ({type(error).__name__}: {error})"

    @click.command(
        "serve",
        help=f"Start the mock server. Unavailable here: {reason}.",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    def serve_unavailable() -> None:
        click.echo(
            f"kv-canary serve: {reason}. The mock server ships with mock_models/; run from a checkout "
            "that has it, or install the package.",
            err=True,
        )
        sys.exit(EXIT_BAD_INPUT)

    return serve_unavailable


def _installed_version() -> str:
    try:
        return importlib.metadata.version("kv-canary")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: run from a source tree; `pip install -e .` installs it)"


@click.group(cls=_KvCanaryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_installed_version(), prog_name="kv-canary", message="%(prog)s %(version)s")
def cli() -> None:
    """Catch silent KV-cache corruption, and prove it with fault injection."""


class BadInput(click.ClickException):
    """Bad input, said in one line: click prints ``Error: <message>`` and exits 2."""

    exit_code = EXIT_BAD_INPUT


def _target_or_exit(name: str, *, device: str, cuda_graphs: bool) -> EngineTarget | None:
    if name == "mock":
        if cuda_graphs:
            raise BadInput("--cuda-graphs applies to --target sglang only; nothing was run.")
        return None
    from harness.sglang.server import SglangLaunch
    from harness.sglang.target import SglangTarget

    try:
        return SglangTarget(launch=SglangLaunch(device=device, cuda_graphs=cuda_graphs))
    except ValueError as error:
        raise BadInput(f"--target sglang: {error}; nothing was run.") from None


def _load_or_exit(paths: tuple[Path, ...]) -> list[LoadedScenario]:
    try:
        return load_scenarios(paths)
    except ScenarioValidationError as error:
        for problem in error.problems:
            click.echo(problem.format(), err=True)
        click.echo(f"{len(error.problems)} problem(s); nothing was run.", err=True)
        sys.exit(EXIT_BAD_INPUT)


@cli.command()
@click.argument("scenarios", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--model-mode",
    type=click.Choice([*MODEL_MODES, "all"]),
    default="all",
    show_default=True,
    help="Run only this mode; a scenario that does not list it is skipped.",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory for the run's plan, results, server logs and the report [default: runs/<UTC time>]; "
    "results of earlier runs into the same directory stay in its report, re-run pairs are replaced.",
)
@click.option(
    "--server-command",
    default=shlex.join(DEFAULT_SERVER_COMMAND),
    show_default=True,
    help="Command that starts the server; the engine flags are appended.",
)
@click.option(
    "--timeout",
    "run_timeout_s",
    type=click.FloatRange(min=1),
    default=600,
    show_default=True,
    help="Wall-clock budget per (scenario, mode) in seconds.",
)
@click.option(
    "--target",
    "target_name",
    type=click.Choice(["mock", "sglang"]),
    default="mock",
    show_default=True,
    help="mock: the mock server (--server-command). sglang: a live SGLang 0.5.23 server per pair, the canary "
    "installed through its plugin and faults injected in its scheduler (docs/SGLANG.md; modes mha and swa).",
)
@click.option(
    "--cuda-graphs/--no-cuda-graphs",
    default=False,
    show_default=True,
    help="With --target sglang --device cuda: let SGLang capture and replay CUDA graphs.",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Pairs run at once, each on its own server (and clean twin); the results are those of a serial run.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Finish the run recorded in --report DIR: run its pairs that have no result yet, with the scenario "
    "files and settings it started with. Takes no SCENARIOS.",
)
@click.pass_context
def run(
    ctx: click.Context,
    scenarios: tuple[Path, ...],
    model_mode: str,
    device: str,
    report_dir: Path | None,
    server_command: str,
    run_timeout_s: float,
    target_name: str,
    cuda_graphs: bool,
    jobs: int,
    resume: bool,
) -> None:
    """Run SCENARIO files (or directories of them) against the mock server (or a live SGLang server) and
    judge every expectation.

    The run directory records the plan first and the report after every pair, so a run that stops
    early leaves a report naming the pairs that never ran; `run --resume --report DIR` runs those.
    """
    if resume:
        run_dir, plan, by_name = _resumed_run(ctx, scenarios, report_dir)
    else:
        if not scenarios:
            raise BadInput("give the SCENARIOS to run (files or directories), or --resume --report DIR")
        _target_or_exit(target_name, device=device, cuda_graphs=cuda_graphs)  # refused before anything is written
        run_dir, plan, by_name = _new_run(
            scenarios,
            model_mode=model_mode,
            device=device,
            report_dir=report_dir,
            server_command=server_command,
            run_timeout_s=run_timeout_s,
            target=target_name,
            cuda_graphs=cuda_graphs,
        )
    options = RunOptions(
        log_dir=run_dir.logs_dir,
        device=plan.device,
        server_command=plan.server_command,
        run_timeout_s=plan.run_timeout_s,
        target=_target_or_exit(plan.target, device=plan.device, cuda_graphs=plan.cuda_graphs),
    )
    pairs = [(by_name[name], mode) for name, mode in plan.not_run(run_dir.read_results(required=False))]
    finished = 0
    interrupted = False
    with termination_signals_exit():
        _render_or_exit(run_dir)  # from the start, the directory says which pairs have not run
        try:
            for _ in _run_pairs(pairs, options, run_dir, jobs=jobs):
                finished += 1
        except KeyboardInterrupt:
            interrupted = True  # the interrupted pair's server is already stopped; report what finished
    rendered = _render_or_exit(run_dir)
    planned = set(plan.pairs())
    results = [result for result in rendered.results if (result.scenario, result.mode) in planned]
    if results:
        click.echo(terminal_table(results))
        passed = sum(result.passed for result in results)
        click.echo(f"{passed} passed, {len(results) - passed} failed; report: {rendered.markdown}")
    if interrupted:
        click.echo(f"interrupted after {finished} of {len(pairs)} pair(s); every server was stopped.", err=True)
        click.echo(incomplete_summary(len(planned), rendered.not_run, run_dir.root), err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(EXIT_HELD if all(result.passed for result in results) else EXIT_FAILED)


def _new_run(
    scenarios: tuple[Path, ...],
    *,
    model_mode: str,
    device: str,
    report_dir: Path | None,
    server_command: str,
    run_timeout_s: float,
    target: str,
    cuda_graphs: bool,
) -> tuple[RunDirectory, RunPlan, dict[str, LoadedScenario]]:
    argv = _server_argv(server_command)
    loaded = _load_or_exit(scenarios)
    plan = RunPlan.for_scenarios(
        loaded,
        model_mode=model_mode,
        device=device,
        server_command=argv,
        run_timeout_s=run_timeout_s,
        target=target,
        cuda_graphs=cuda_graphs,
    )
    planned = {item.name for item in plan.scenarios}
    skipped = [item.scenario.name for item in loaded if item.scenario.name not in planned]
    if not planned:
        click.echo(f"none of the {len(loaded)} scenario(s) lists mode {model_mode}; nothing to run.", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if skipped:
        click.echo(f"skipping {len(skipped)} scenario(s) without mode {model_mode}: {', '.join(skipped)}", err=True)
    run_dir = RunDirectory(report_dir or Path("runs") / datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ"))
    try:
        run_dir.start(plan)
    except RunDirectoryError as error:
        raise BadInput(f"--report: {error}") from None
    return run_dir, plan, {item.scenario.name: item for item in loaded}


def _resumed_run(
    ctx: click.Context, scenarios: tuple[Path, ...], report_dir: Path | None
) -> tuple[RunDirectory, RunPlan, dict[str, LoadedScenario]]:
    if report_dir is None:
        raise BadInput("--resume needs --report DIR, the run directory of the run to finish")
    given = [
        param.opts[0]
        for param in ctx.command.params
        if param.name in ("model_mode", "device", "server_command", "run_timeout_s", "target_name", "cuda_graphs")
        and ctx.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE
    ]
    if scenarios or given:
        what = ", ".join([*(["SCENARIOS"] if scenarios else []), *given])
        raise BadInput(
            f"--resume finishes the run with the scenarios and settings in {report_dir}/run.json; drop {what}"
        )
    run_dir = RunDirectory(report_dir)
    try:
        plan = run_dir.read_plan()
        run_dir.prepare()
    except RunDirectoryError as error:
        raise BadInput(str(error)) from None
    if plan is None:
        raise BadInput(
            f"{report_dir} has no run.json: it was not written by `kv-canary run`, so there is no run to resume"
        )
    try:
        check_server_program(plan.server_command)
    except ServerCommandError as error:
        raise BadInput(f"{error} (recorded in {run_dir.plan_path})") from None
    loaded = _load_or_exit(tuple(Path(item.path) for item in plan.scenarios))
    changed = plan.changed_files()
    if changed:
        raise BadInput(
            f"{', '.join(changed)} changed since the run started; its results would not match. Start a new run instead."
        )
    return run_dir, plan, {item.scenario.name: item for item in loaded}


def _server_argv(server_command: str) -> tuple[str, ...]:
    try:
        return split_server_command(server_command)
    except ServerCommandError as error:
        raise BadInput(str(error)) from None


def _render_or_exit(run_dir: RunDirectory) -> RenderedReport:
    try:
        return render_report(run_dir.root)
    except RunDirectoryError as error:
        raise BadInput(str(error)) from None


def _run_pairs(
    pairs: list[tuple[LoadedScenario, str]], options: RunOptions, run_dir: RunDirectory, *, jobs: int
) -> Iterator[None]:
    """Runs the pairs, ``jobs`` at a time (each on its own server); yields after each. A pair's result is
    recorded and the report re-rendered before its thread starts another pair, so a run killed at any
    moment leaves every finished pair in the report. Results are read back sorted, so the report does
    not depend on the order pairs finish in."""
    from tqdm import tqdm  # only `run` draws a progress bar

    recording = threading.Lock()

    def run_and_record(item: LoadedScenario, mode: str) -> RunResult:
        result = run_scenario(item, mode, options)
        with recording:
            run_dir.write_result(result)
            render_report(run_dir.root)
        return result

    with tqdm(total=len(pairs), unit="pair", file=sys.stderr, dynamic_ncols=True) as progress:
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="kv-canary-pair")
        try:
            futures = [executor.submit(run_and_record, item, mode) for item, mode in pairs]
            for future in concurrent.futures.as_completed(futures):
                result = future.result()
                progress.set_description(pair_id(result.scenario, result.mode))
                progress.update()
                if not result.passed:
                    progress.write(result.failure_message(), file=sys.stderr)
                yield
        except BaseException:
            # Interrupted: pairs not started are dropped, and the servers of running ones are stopped, so
            # that their threads unwind (a pair whose server is gone fails fast) instead of running on.
            executor.shutdown(wait=False, cancel_futures=True)
            stop_all()
            raise
        executor.shutdown(wait=True)


@cli.command()
@click.argument("scenarios", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate(scenarios: tuple[Path, ...]) -> None:
    """Check SCENARIO files (or directories of them) without running anything."""
    loaded = _load_or_exit(scenarios)
    pairs = sum(len(item.scenario.model_modes) for item in loaded)
    click.echo(f"{len(loaded)} scenario(s), {pairs} (scenario, mode) pair(s): all valid.")


@cli.command("list")
@click.option(
    "--dir",
    "scenario_dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_SCENARIO_DIR,
    show_default=True,
    help="The scenario library.",
)
def list_scenarios(scenario_dir: Path) -> None:
    """List the scenario library: name, modes, fault kind and whether it must be detected."""
    loaded = _load_or_exit((scenario_dir,))
    rows = [
        ("name", "modes", "fault", "expect"),
        *(
            (
                item.scenario.name,
                ",".join(item.scenario.model_modes),
                _culprits(item.scenario),
                "detected"
                if item.scenario.expects_detection
                else "blind spot"
                if item.scenario.expect.blind_spot
                else "clean",
            )
            for item in loaded
        ),
    ]
    click.echo(aligned_columns(rows))


def _culprits(scenario: Scenario) -> str:
    """What the scenario turns on: its fault kinds and engine bugs ('double_free+bug:<name>'), or 'none'."""
    kinds = [fault.kind for _, fault in scenario.named_faults()] + [f"bug:{bug}" for bug in scenario.bugs]
    return "+".join(kinds) or "none"


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def report(run_dir: Path) -> None:
    """Render report.md, report.json and heatmap.png for RUN_DIR (written by `run --report RUN_DIR`).

    Exit status 0 only if every pair held and none the run planned is missing.
    """
    try:
        rendered = render_report(run_dir)
    except RunDirectoryError as error:
        click.echo(f"kv-canary report: {error}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(
        f"{rendered.passed} passed, {rendered.failed} failed: {rendered.markdown}, {rendered.json}, {rendered.heatmap}"
    )
    if rendered.planned is not None and rendered.not_run:
        click.echo(incomplete_summary(rendered.planned, rendered.not_run, run_dir), err=True)
    sys.exit(EXIT_HELD if rendered.all_held else EXIT_FAILED)


@cli.command()
@click.option(
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default=None,
    help=f"A file, or - for standard output [default: the scenario library's, {LIBRARY_SCHEMA_FILE}].",
)
@click.option("--check", is_flag=True, help="Do not write; exit 1 if the file is not up to date.")
def schema(output: Path | None, check: bool) -> None:
    """Export the scenario JSON Schema (for editors; `validate` also applies rules it cannot express)."""
    rendered = render_json_schema()
    if output == Path("-"):
        if check:
            raise BadInput("--check compares a file with the schema; give --output PATH, not -")
        click.echo(rendered, nl=False)
        return
    if output is None:
        if not LIBRARY_SCHEMA_FILE.parent.is_dir():
            raise BadInput(
                f"no scenario library beside this installation ({LIBRARY_SCHEMA_FILE.parent}); "
                "give --output PATH, or --output - for standard output"
            )
        output = LIBRARY_SCHEMA_FILE
    if check:
        current = output.read_text() if output.is_file() else None
        if current != rendered:
            click.echo(f"{output} is out of date; run `kv-canary schema` and commit it.", err=True)
            sys.exit(EXIT_FAILED)
        click.echo(f"{output} is up to date.")
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(rendered)
    except OSError as error:
        raise BadInput(f"--output {output}: cannot write it ({error.strerror}: {error.filename})") from None
    click.echo(f"wrote {output}")


def main() -> None:
    cli(prog_name="kv-canary")
