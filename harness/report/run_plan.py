"""The plan of a ``kv-canary run``: the (scenario, mode) pairs it means to run and the settings it
runs them with, written to ``run.json`` before the first pair starts.

A run killed midway (even by SIGKILL) so leaves a directory that says which pairs never ran, and
``kv-canary run --resume --report DIR`` finishes them with the same scenario files (checked by
hash) and the same settings, so the finished report is the one an uninterrupted run would give.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from harness.run_result import RunResult
from harness.scenario.loader import LoadedScenario

PLAN_FILE = "run.json"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlannedScenario(_Frozen):
    name: str
    path: str  # absolute, so that --resume finds it from any directory
    sha256: str  # of the file as it was when the run started
    modes: tuple[str, ...]  # the modes this run covers


class RunPlan(_Frozen):
    format: Literal[1] = 1
    scenarios: tuple[PlannedScenario, ...]
    model_mode: str  # the --model-mode the pairs were chosen with
    device: str
    server_command: tuple[str, ...]
    run_timeout_s: float
    target: str = "mock"  # --target: mock, or sglang
    cuda_graphs: bool = False

    @classmethod
    def for_scenarios(
        cls,
        loaded: Sequence[LoadedScenario],
        *,
        model_mode: str,
        device: str,
        server_command: tuple[str, ...],
        run_timeout_s: float,
        target: str = "mock",
        cuda_graphs: bool = False,
    ) -> RunPlan:
        """Every (scenario, mode) pair ``model_mode`` (all, or one mode) selects; scenarios with none are left out."""
        planned = (
            PlannedScenario(
                name=item.scenario.name,
                path=str(item.path.resolve()),
                sha256=file_sha256(item.path),
                modes=tuple(mode for mode in item.scenario.model_modes if model_mode in ("all", mode)),
            )
            for item in loaded
        )
        return cls(
            scenarios=tuple(item for item in planned if item.modes),
            model_mode=model_mode,
            device=device,
            server_command=server_command,
            run_timeout_s=run_timeout_s,
            target=target,
            cuda_graphs=cuda_graphs,
        )

    def changed_files(self) -> list[str]:
        """The scenario files whose content is not what the run started with."""
        return [item.path for item in self.scenarios if file_sha256(Path(item.path)) != item.sha256]

    def pairs(self) -> list[tuple[str, str]]:
        """(scenario, mode) of every planned pair, in run order."""
        return [(item.name, mode) for item in self.scenarios for mode in item.modes]

    def not_run(self, results: list[RunResult]) -> list[tuple[str, str]]:
        """The planned (scenario, mode) pairs that have no result."""
        finished = {(result.scenario, result.mode) for result in results}
        return [pair for pair in self.pairs() if pair not in finished]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
