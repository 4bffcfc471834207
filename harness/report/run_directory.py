"""The layout of a run directory: the run's plan (``run.json``), one JSON result and one server log
per (scenario, mode), and the report rendered from them.

Files are replaced whole (written beside, then renamed), so a run killed while writing one leaves
the previous version or the new one, never half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pydantic

from harness.report.run_plan import PLAN_FILE, RunPlan
from harness.run_result import RunResult, pair_file_stem


class RunDirectoryError(ValueError):
    """A run directory that cannot be used or reported on; the message names the path and what to do."""


class RunDirectory:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.results_dir = root / "results"
        self.logs_dir = root / "logs"
        self.plan_path = root / PLAN_FILE

    def prepare(self) -> None:
        """Create the directory and its folders, or say why it cannot be one."""
        try:
            self.results_dir.mkdir(parents=True, exist_ok=True)
            self.logs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunDirectoryError(
                f"{self.root} cannot be a run directory ({error.strerror}: {error.filename}); "
                "give --report a directory that can be created and written"
            ) from None

    def start(self, plan: RunPlan) -> None:
        """Begin a fresh run: its plan recorded, and earlier results of its pairs removed, so that a
        result in the directory is one this run (or its resumption) produced."""
        self.prepare()
        for scenario, mode in plan.pairs():
            (self.results_dir / f"{pair_file_stem(scenario, mode)}.json").unlink(missing_ok=True)
        self._write(self.plan_path, plan.model_dump_json(indent=2) + "\n")

    def read_plan(self) -> RunPlan | None:
        """The plan of the run that wrote the directory; None for a directory without one (pytest's)."""
        try:
            text = self.plan_path.read_text()
        except FileNotFoundError:
            return None
        try:
            return RunPlan.model_validate_json(text)
        except pydantic.ValidationError as error:
            raise RunDirectoryError(
                f"{self.plan_path}: not a run plan ({error.error_count()} problem(s), the first: "
                f"{error.errors()[0]['msg']}); remove it, or start a new run in another directory"
            ) from None

    def write_result(self, result: RunResult) -> Path:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        path = self.results_dir / f"{pair_file_stem(result.scenario, result.mode)}.json"
        self._write(path, json.dumps(result.to_json(), indent=2) + "\n")
        return path

    def read_results(self, *, required: bool = True) -> list[RunResult]:
        """Every result, sorted by (scenario, mode); with ``required``, none at all is an error."""
        if not self.results_dir.is_dir():
            if not required:
                return []
            raise RunDirectoryError(
                f"{self.root} has no results/ folder; point at a directory written by `kv-canary run --report DIR`"
            )
        results = []
        for path in sorted(self.results_dir.glob("*.json")):
            try:
                results.append(RunResult.from_json(json.loads(path.read_text())))
            except (ValueError, KeyError, TypeError) as error:
                raise RunDirectoryError(
                    f"{path}: not a run result ({type(error).__name__}: {error}); remove it or re-run its scenario"
                ) from None
        if not results and required:
            raise RunDirectoryError(f"{self.results_dir} holds no *.json run results")
        return sorted(results, key=lambda result: (result.scenario, result.mode))

    @staticmethod
    def _write(path: Path, text: str) -> None:
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(text)
        os.replace(partial, path)
