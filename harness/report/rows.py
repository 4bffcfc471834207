"""One report row per (scenario, mode), and the two tables made of them (Markdown and terminal)."""

from __future__ import annotations

from collections.abc import Sequence

from harness.run_result import RunResult
from harness.text_table import aligned_columns

COLUMNS = (
    "scenario",
    "mode",
    "expected",
    "result",
    "detected",
    "latency",
    "violations",
    "reasons",
    "wall s",
)
# report.md's extra columns: the step of the first wrong output, and whether the canary spoke by then.
HARM_COLUMNS = ("first wrong", "before harm")


def report_row(result: RunResult) -> dict[str, object]:
    """The machine-readable row of report.json."""
    check = result.check
    return {
        "scenario": result.scenario,
        "mode": result.mode,
        "passed": result.passed,
        "detected": check.detected if check else None,
        "latency_steps": check.latency_steps if check else None,
        "violation_count": check.violation_count if check else None,
        "reasons_seen": list(check.fail_reasons_seen) if check else [],
        "launch_tags_seen": list(check.launch_tags_seen) if check else [],
        "violations_by_rank": {str(rank): count for rank, count in check.violations_by_rank} if check else {},
        "wall_time_s": round(result.wall_time_s, 3),
        "unmet": [outcome.expectation for outcome in check.unmet()] if check else [],
        "error": result.error.splitlines()[0] if result.error else None,
        "log_path": result.log_path,
    }


def harm_row(result: RunResult) -> dict[str, object]:
    """report.json's harm entry of a pair: the forward that sampled the first wrong output (None: none went
    wrong, or outputs were not judged) and whether the canary's first violation came at or before it."""
    check = result.check
    return {
        "scenario": result.scenario,
        "mode": result.mode,
        "outputs_judged": check.harm_judged if check else False,
        "first_wrong_step": check.first_wrong.step if check and check.first_wrong else None,
        "first_wrong": check.first_wrong.describe() if check and check.first_wrong else None,
        "detected_before_harm": check.detected_before_harm if check else None,
    }


def _cells(result: RunResult) -> tuple[str, ...]:
    row = report_row(result)
    check = result.check
    verdict = "pass" if result.passed else ("ERROR" if result.error else "FAIL")
    return (
        result.scenario,
        result.mode,
        "-" if check is None else check.expected_text(),
        verdict,
        "-" if check is None else check.detected_text(),
        "-" if row["latency_steps"] is None else str(row["latency_steps"]),
        _violations_cell(result),
        ",".join(check.fail_reasons_seen if check is not None else ()) or "-",
        f"{result.wall_time_s:.1f}",
    )


def _harm_cells(result: RunResult) -> tuple[str, ...]:
    check = result.check
    return ("-", "-") if check is None else (check.harm_text(), check.before_harm_text())


def markdown_table(results: Sequence[RunResult]) -> str:
    columns = (*COLUMNS, *HARM_COLUMNS)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join((*_cells(result), *_harm_cells(result))) + " |" for result in results]
    return "\n".join(lines)


def terminal_table(results: Sequence[RunResult]) -> str:
    return aligned_columns([COLUMNS, *(_cells(result) for result in results)])


def _violations_cell(result: RunResult) -> str:
    """The count; with several ranks, also each rank's ('14 rank0:2 rank1:12')."""
    check = result.check
    if check is None:
        return "-"
    return " ".join(filter(None, (str(check.violation_count), check.ranks_text())))
