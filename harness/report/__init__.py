"""Run directories and the detection report rendered from them."""

from harness.report.render import RenderedReport, render_report
from harness.report.rows import terminal_table
from harness.report.run_directory import RunDirectory, RunDirectoryError

__all__ = ["RenderedReport", "RunDirectory", "RunDirectoryError", "render_report", "terminal_table"]
