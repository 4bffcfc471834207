"""A run's wall-clock budget, checked between steps of the run."""

from __future__ import annotations

import time

from harness.runner.errors import RunTimeout


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def check(self, doing: str) -> None:
        if time.monotonic() >= self._end:
            raise RunTimeout(f"the run passed its {self.seconds:.0f}s budget while {doing}")
