"""The scenario x mode heatmap: green held (the cell gives the latency), red failed (the cell says
why), dark grey planned but never run, light grey 'n/a: reason' where the scenario does not run in
that mode (its file says why, or the contract does); a legend says so."""

from __future__ import annotations

import textwrap
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from harness.run_result import RunResult
from harness.scenario.model import MODEL_MODES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HELD, FAILED, NOT_RUN, NOT_A_MODE = "#4caf50", "#e53935", "#9e9e9e", "#eeeeee"
LEGEND = (
    (HELD, "held (+N: detected N forwards after the injection)"),
    (FAILED, "failed (why)"),
    (NOT_RUN, "planned, never ran"),
    (NOT_A_MODE, "n/a: not a mode (why)"),
)
_NA_WIDTH, _NA_LINES = 22, 3  # an n/a reason, wrapped to fit its cell; report.md has it whole
TITLE = "kv-canary detection"
_MIN_WIDTH_IN = 5.0  # room for the title and the legend even with one mode


def cell_label(result: RunResult) -> str:
    """What a cell says: the latency of a held detection ('caught' for an engine bug, which has no injection
    step), 'clean', 'blind spot' (a pinned one: harm, no detection), or why the pair failed."""
    if result.error is not None or result.check is None:
        return "error"
    check = result.check
    if check.passed:
        if check.latency_steps is not None:
            return f"+{check.latency_steps}"
        if check.expects_detection:
            return "caught"
        return "blind spot" if check.first_wrong is not None else "clean"  # pinned: harm the canary cannot see
    return next((outcome.label for outcome in check.unmet() if outcome.label), "failed")


def not_applicable_pairs(results: Sequence[RunResult]) -> dict[tuple[str, str], str]:
    """(scenario, mode) -> why the scenario does not run in that mode, from its results."""
    return {(result.scenario, mode): reason for result in results for mode, reason in result.not_applicable.items()}


def not_applicable_label(reason: str) -> str:
    return textwrap.fill(f"n/a: {reason}", width=_NA_WIDTH, max_lines=_NA_LINES, placeholder="...")


def heatmap_figure(results: Sequence[RunResult], *, not_run: Collection[tuple[str, str]] = ()) -> Figure:
    """The figure, drawn on an Agg canvas: (scenario, mode) pairs in ``not_run`` are grey and say so."""
    # The figure API with an Agg canvas, not pyplot: no global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    scenarios = sorted({result.scenario for result in results} | {scenario for scenario, _ in not_run})
    modes = [mode for mode in MODEL_MODES if any(r.mode == mode for r in results) or any(m == mode for _, m in not_run)]
    by_pair = {(result.scenario, result.mode): result for result in results}
    not_applicable: Mapping[tuple[str, str], str] = not_applicable_pairs(results)
    longest_name = max((len(name) for name in scenarios), default=0)
    width = max(_MIN_WIDTH_IN, 1.2 + 0.07 * longest_name + 1.4 * len(modes))
    figure = Figure(figsize=(width, 1.8 + 0.45 * len(scenarios)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = [[to_rgb(NOT_A_MODE)] * len(modes) for _ in scenarios]
    for row, scenario in enumerate(scenarios):
        for column, mode in enumerate(modes):
            result = by_pair.get((scenario, mode))
            if result is not None:
                colour, label = (HELD if result.passed else FAILED), cell_label(result)
            elif (scenario, mode) in not_run:
                colour, label = NOT_RUN, "not run"
            elif (scenario, mode) in not_applicable:
                axes.text(
                    column,
                    row,
                    not_applicable_label(not_applicable[scenario, mode]),
                    ha="center",
                    va="center",
                    fontsize=5,
                )
                continue
            else:
                continue  # a mode this run left out (--model-mode)
            colours[row][column] = to_rgb(colour)
            axes.text(column, row, label, ha="center", va="center", fontsize=7)
    axes.imshow(colours, aspect="auto")
    axes.set_xticks(range(len(modes)), modes)
    axes.set_yticks(range(len(scenarios)), scenarios, fontsize=8)
    axes.xaxis.tick_top()
    # white lines between cells, so that neighbouring cells of one colour stay apart
    axes.set_xticks([column - 0.5 for column in range(1, len(modes))], minor=True)
    axes.set_yticks([row - 0.5 for row in range(1, len(scenarios))], minor=True)
    axes.grid(which="minor", color="white", linewidth=2)
    axes.tick_params(which="minor", length=0)
    figure.suptitle(TITLE, fontsize=10)
    figure.legend(
        handles=[Patch(facecolor=colour, edgecolor="#616161", label=label) for colour, label in LEGEND],
        loc="outside lower center",
        ncols=2,
        fontsize=7,
        frameon=False,
    )
    return figure


def render_heatmap(results: Sequence[RunResult], path: Path, *, not_run: Collection[tuple[str, str]] = ()) -> None:
    heatmap_figure(results, not_run=not_run).savefig(path, dpi=120)
