"""``kv-canary report DIR``: report.json, report.md and heatmap.png from a run directory's results.

Where the directory has a plan (``run.json``, written by ``kv-canary run``), the pairs it planned
and never finished are named in every format: a run that stopped early does not read as a pass.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from harness.report.heatmap import not_applicable_pairs, render_heatmap
from harness.report.rows import harm_row, markdown_table, report_row
from harness.report.run_directory import RunDirectory
from harness.run_result import RunResult

HEATMAP_FILE = "heatmap.png"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RenderedReport:
    markdown: Path
    json: Path
    heatmap: Path
    results: tuple[RunResult, ...]
    planned: int | None  # pairs the run's plan holds; None without a plan
    not_run: tuple[tuple[str, str], ...]  # (scenario, mode) of the planned pairs without a result

    @property
    def passed(self) -> int:
        return sum(result.passed for result in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed

    @property
    def complete(self) -> bool:
        return not self.not_run

    @property
    def all_held(self) -> bool:
        return self.complete and self.failed == 0


def render_report(root: Path) -> RenderedReport:
    directory = RunDirectory(root)
    plan = directory.read_plan()
    results = directory.read_results(required=plan is None)
    not_run = tuple(plan.not_run(results)) if plan is not None else ()
    planned = len(plan.pairs()) if plan is not None else None
    passed = sum(result.passed for result in results)
    failed = len(results) - passed
    json_path, markdown_path, heatmap_path = root / "report.json", root / "report.md", root / HEATMAP_FILE
    json_path.write_text(
        json.dumps(
            {
                "summary": {"pairs": len(results), "passed": passed, "failed": failed},
                "run": {"planned": planned, "complete": not not_run, "not_run": [pair_id(*pair) for pair in not_run]},
                "rows": [report_row(result) for result in results],
                "harm": [harm_row(result) for result in results],
                "not_applicable": [
                    {"scenario": scenario, "mode": mode, "reason": reason}
                    for (scenario, mode), reason in sorted(not_applicable_pairs(results).items())
                ],
            },
            indent=2,
        )
        + "\n"
    )
    render_heatmap(results, heatmap_path, not_run=set(not_run))
    summary = _summary(results, planned, not_run, root)
    sections = [f"# kv-canary detection report\n\n{summary}\n", markdown_table(results)]
    sections.append(f"\n![detection heatmap]({HEATMAP_FILE})\n")
    not_applicable = not_applicable_pairs(results)
    if not_applicable:
        sections.append("## Not applicable\n")
        sections.append(
            "\n".join(f"* {pair_id(*pair)}: n/a: {reason}" for pair, reason in sorted(not_applicable.items())) + "\n"
        )
    if not_run:
        sections.append("## Never ran\n")
        sections.append("\n".join(f"* {pair_id(*pair)}" for pair in not_run) + "\n")
    failures = [result.failure_message() for result in results if not result.passed]
    if failures:
        sections.append("## Failures\n")
        sections += [f"```\n{failure}\n```\n" for failure in failures]
    markdown_path.write_text("\n".join(sections))
    return RenderedReport(
        markdown=markdown_path,
        json=json_path,
        heatmap=heatmap_path,
        results=tuple(results),
        planned=planned,
        not_run=not_run,
    )


def pair_id(scenario: str, mode: str) -> str:
    return f"{scenario}[{mode}]"


def incomplete_summary(planned: int, not_run: tuple[tuple[str, str], ...], root: Path) -> str:
    """One sentence: how many planned pairs never ran, which, and how to finish them."""
    return (
        f"incomplete run: {len(not_run)} of {planned} planned (scenario, mode) pairs never ran "
        f"({', '.join(pair_id(*pair) for pair in not_run)}); finish them with "
        f"`kv-canary run --resume --report {root}`"
    )


def _summary(results: list[RunResult], planned: int | None, not_run: tuple[tuple[str, str], ...], root: Path) -> str:
    passed = sum(result.passed for result in results)
    held = f"{passed} of {len(results)} (scenario, mode) pairs held every expectation."
    if planned is None or not not_run:
        return held
    sentence = incomplete_summary(planned, not_run, root)
    return f"**{sentence[0].upper()}{sentence[1:]}.** {held}"
