"""The scenario x mode heatmap: green held, red failed, grey not run; the cell says the latency."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.run_result import RunResult
from harness.scenario.model import MODEL_MODES

_PASS, _FAIL, _NOT_RUN = "#4caf50", "#e53935", "#eeeeee"


def _cell_label(result: RunResult) -> str:
    if result.error is not None:
        return "error"
    if not result.passed:
        return "FAIL"
    latency = result.check.latency_steps
    return "clean" if latency is None else f"+{latency}"


def render_heatmap(results: Sequence[RunResult], path: Path) -> None:
    # The figure API with an Agg canvas, not pyplot: no global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure

    scenarios = sorted({result.scenario for result in results})
    modes = [mode for mode in MODEL_MODES if any(result.mode == mode for result in results)]
    by_pair = {(result.scenario, result.mode): result for result in results}
    colours = [[to_rgb(_NOT_RUN)] * len(modes) for _ in scenarios]
    figure = Figure(figsize=(2.0 + 1.2 * len(modes), 1.0 + 0.35 * len(scenarios)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for row, scenario in enumerate(scenarios):
        for column, mode in enumerate(modes):
            result = by_pair.get((scenario, mode))
            if result is None:
                continue
            colours[row][column] = to_rgb(_PASS if result.passed else _FAIL)
            axes.text(column, row, _cell_label(result), ha="center", va="center", fontsize=8)
    axes.imshow(colours, aspect="auto")
    axes.set_xticks(range(len(modes)), modes)
    axes.set_yticks(range(len(scenarios)), scenarios, fontsize=8)
    axes.xaxis.tick_top()
    # white lines between cells, so that neighbouring cells of one colour stay apart
    axes.set_xticks([column - 0.5 for column in range(1, len(modes))], minor=True)
    axes.set_yticks([row - 0.5 for row in range(1, len(scenarios))], minor=True)
    axes.grid(which="minor", color="white", linewidth=2)
    axes.tick_params(which="minor", length=0)
    axes.set_title("kv-canary detection (cell: latency in steps)", fontsize=9)
    figure.savefig(path, dpi=120)
