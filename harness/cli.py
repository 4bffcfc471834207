"""The ``kv-canary`` command line.

Exit status: 0 every expectation held, 1 an expectation failed, 2 bad input (invalid scenarios,
missing files, nothing to run); 130 when interrupted.
"""

from __future__ import annotations

import datetime
import shlex
import sys
from pathlib import Path

import click

from harness.report import RunDirectory, RunDirectoryError, render_report, terminal_table
from harness.run_result import RunResult
from harness.runner import DEFAULT_SERVER_COMMAND, RunOptions, run_scenario
from harness.runner.safety_net import termination_signals_exit
from harness.scenario import MODEL_MODES, LoadedScenario, ScenarioValidationError, load_scenarios
from harness.scenario.json_schema import SCHEMA_FILE, render_json_schema
from harness.text_table import aligned_columns

EXIT_HELD, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_SCENARIO_DIR = Path("scenarios")


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


@click.group(cls=_KvCanaryGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Catch silent KV-cache corruption, and prove it with fault injection."""


def _target_or_exit(name: str, *, device: str, cuda_graphs: bool):
    if name == "mock":
        if cuda_graphs:
            click.echo("--cuda-graphs applies to --target sglang only; nothing was run.", err=True)
            sys.exit(EXIT_BAD_INPUT)
        return None
    from harness.sglang.server import SglangLaunch
    from harness.sglang.target import SglangTarget

    try:
        return SglangTarget(launch=SglangLaunch(device=device, cuda_graphs=cuda_graphs))
    except ValueError as error:
        click.echo(f"--target sglang: {error}; nothing was run.", err=True)
        sys.exit(EXIT_BAD_INPUT)


def _load_or_exit(paths: tuple[Path, ...]) -> list[LoadedScenario]:
    try:
        return load_scenarios(paths)
    except ScenarioValidationError as error:
        for problem in error.problems:
            click.echo(problem.format(), err=True)
        click.echo(f"{len(error.problems)} problem(s); nothing was run.", err=True)
        sys.exit(EXIT_BAD_INPUT)


@cli.command()
@click.argument("scenarios", nargs=-1, required=True, type=click.Path(path_type=Path))
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
    help="Run directory for results, server logs and the report [default: runs/<UTC time>]; results "
    "of earlier runs into the same directory stay in its report, re-run pairs are replaced.",
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
def run(
    scenarios: tuple[Path, ...],
    model_mode: str,
    device: str,
    report_dir: Path | None,
    server_command: str,
    run_timeout_s: float,
    target_name: str,
    cuda_graphs: bool,
) -> None:
    """Run SCENARIO files (or directories of them) against the mock server (or a live SGLang server) and
    judge every expectation."""
    target = _target_or_exit(target_name, device=device, cuda_graphs=cuda_graphs)
    loaded = _load_or_exit(scenarios)
    pairs = [(item, mode) for item in loaded for mode in item.scenario.model_modes if model_mode in ("all", mode)]
    skipped = [item.scenario.name for item in loaded if all(mode != model_mode for mode in item.scenario.model_modes)]
    if not pairs:
        click.echo(f"none of the {len(loaded)} scenario(s) lists mode {model_mode}; nothing to run.", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if skipped and model_mode != "all":
        click.echo(f"skipping {len(skipped)} scenario(s) without mode {model_mode}: {', '.join(skipped)}", err=True)
    run_dir = RunDirectory(report_dir or Path("runs") / datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ"))
    options = RunOptions(
        log_dir=run_dir.logs_dir,
        device=device,
        server_command=tuple(shlex.split(server_command)),
        run_timeout_s=run_timeout_s,
        target=target,
    )
    results: list[RunResult] = []
    interrupted = False
    with termination_signals_exit():
        try:
            _run_pairs(pairs, options, run_dir, results)
        except KeyboardInterrupt:
            interrupted = True  # the interrupted pair's server is already stopped; report what finished
    if results:
        click.echo(terminal_table(results))
        rendered = render_report(run_dir.root)
        passed = sum(result.passed for result in results)
        click.echo(f"{passed} passed, {len(results) - passed} failed; report: {rendered.markdown}")
    if interrupted:
        click.echo(f"interrupted after {len(results)} of {len(pairs)} pair(s); every server was stopped.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(EXIT_HELD if all(result.passed for result in results) else EXIT_FAILED)


def _run_pairs(
    pairs: list[tuple[LoadedScenario, str]], options: RunOptions, run_dir: RunDirectory, results: list[RunResult]
) -> None:
    """Appends to ``results`` as it goes, so that an interrupted run still reports the finished pairs."""
    from tqdm import tqdm  # only `run` draws a progress bar

    with tqdm(pairs, unit="pair", file=sys.stderr, dynamic_ncols=True) as progress:
        for item, mode in progress:
            progress.set_description(f"{item.scenario.name}[{mode}]")
            result = run_scenario(item, mode, options)
            run_dir.write_result(result)
            results.append(result)
            if not result.passed:
                progress.write(result.failure_message(), file=sys.stderr)


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
                item.scenario.fault.kind if item.scenario.injects_fault else "none",
                "detected" if item.scenario.expects_detection else "clean",
            )
            for item in loaded
        ),
    ]
    click.echo(aligned_columns(rows))


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def report(run_dir: Path) -> None:
    """Render report.md, report.json and heatmap.png for RUN_DIR (written by `run --report RUN_DIR`)."""
    try:
        rendered = render_report(run_dir)
    except RunDirectoryError as error:
        click.echo(f"kv-canary report: {error}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(
        f"{rendered.passed} passed, {rendered.failed} failed: {rendered.markdown}, {rendered.json}, {rendered.heatmap}"
    )
    sys.exit(EXIT_HELD if rendered.failed == 0 else EXIT_FAILED)


@cli.command()
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=SCHEMA_FILE, show_default=True)
@click.option("--check", is_flag=True, help="Do not write; exit 1 if the file is not up to date.")
def schema(output: Path, check: bool) -> None:
    """Export the scenario JSON Schema (for editors; `validate` also applies rules it cannot express)."""
    rendered = render_json_schema()
    if check:
        current = output.read_text() if output.is_file() else None
        if current != rendered:
            click.echo(f"{output} is out of date; run `kv-canary schema` and commit it.", err=True)
            sys.exit(EXIT_FAILED)
        click.echo(f"{output} is up to date.")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(rendered)
    click.echo(f"wrote {output}")


def main() -> None:
    cli(prog_name="kv-canary")
