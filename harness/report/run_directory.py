"""The layout of a run directory: one JSON result and one server log per (scenario, mode)."""

from __future__ import annotations

import json
from pathlib import Path

from harness.run_result import RunResult, pair_file_stem


class RunDirectoryError(ValueError):
    """A run directory that cannot be reported on; the message names the path and what to do."""


class RunDirectory:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.results_dir = root / "results"
        self.logs_dir = root / "logs"

    def write_result(self, result: RunResult) -> Path:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        path = self.results_dir / f"{pair_file_stem(result.scenario, result.mode)}.json"
        path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        return path

    def read_results(self) -> list[RunResult]:
        if not self.results_dir.is_dir():
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
        if not results:
            raise RunDirectoryError(f"{self.results_dir} holds no *.json run results")
        return sorted(results, key=lambda result: (result.scenario, result.mode))
