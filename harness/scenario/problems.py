"""A problem found in a scenario file, located at file, line and key, and the error that carries them all."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

Location = tuple[str | int, ...]


def dotted_key(loc: Location) -> str:
    """('workload', 'requests', 1, 'prompt_len') -> 'workload.requests[1].prompt_len'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(document)"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ScenarioProblem:
    path: Path
    line: int | None
    key: str
    message: str

    def format(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.key}: {self.message}"


class ScenarioValidationError(ValueError):
    """Every problem found in a set of scenario files, so that an author can fix them in one pass."""

    def __init__(self, problems: Sequence[ScenarioProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(problem.format() for problem in self.problems))
