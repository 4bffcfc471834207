"""``kv-canary report DIR``: report.json, report.md and heatmap.png from a run directory's results."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from harness.report.heatmap import render_heatmap
from harness.report.rows import markdown_table, report_row
from harness.report.run_directory import RunDirectory

HEATMAP_FILE = "heatmap.png"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RenderedReport:
    markdown: Path
    json: Path
    heatmap: Path
    passed: int
    failed: int


def render_report(root: Path) -> RenderedReport:
    results = RunDirectory(root).read_results()
    passed = sum(result.passed for result in results)
    failed = len(results) - passed
    json_path, markdown_path, heatmap_path = root / "report.json", root / "report.md", root / HEATMAP_FILE
    json_path.write_text(
        json.dumps(
            {
                "summary": {"pairs": len(results), "passed": passed, "failed": failed},
                "rows": [report_row(result) for result in results],
            },
            indent=2,
        )
        + "\n"
    )
    render_heatmap(results, heatmap_path)
    sections = [
        f"# kv-canary detection report\n\n{passed} of {len(results)} (scenario, mode) pairs held every expectation.\n",
        markdown_table(results),
        f"\n![detection heatmap]({HEATMAP_FILE})\n",
    ]
    failures = [result.failure_message() for result in results if not result.passed]
    if failures:
        sections.append("## Failures\n")
        sections += [f"```\n{failure}\n```\n" for failure in failures]
    markdown_path.write_text("\n".join(sections))
    return RenderedReport(markdown=markdown_path, json=json_path, heatmap=heatmap_path, passed=passed, failed=failed)
