"""Run directories and the detection report rendered from them."""

from harness.report.render import RenderedReport, incomplete_summary, pair_id, render_report
from harness.report.rows import terminal_table
from harness.report.run_directory import RunDirectory, RunDirectoryError
from harness.report.run_plan import PlannedScenario, RunPlan

__all__ = [
    "PlannedScenario",
    "RenderedReport",
    "RunDirectory",
    "RunDirectoryError",
    "RunPlan",
    "incomplete_summary",
    "pair_id",
    "render_report",
    "terminal_table",
]
