"""One expectation of a run, judged: what was expected, whether it held, why, and the log lines behind it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from kv_canary.log_lines import ViolationRecord

MAX_LINES_PER_OUTCOME = 10  # kept in the result; a failure message shows the first and the count


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ExpectationOutcome:
    expectation: str  # what was expected, in the scenario's words
    held: bool
    reason: str  # why it held or not, with the numbers
    log_lines: tuple[str, ...] = ()  # the first MAX_LINES_PER_OUTCOME of the lines behind it
    line_count: int = 0  # how many lines are behind it in all
    label: str = ""  # a few words for a report cell when it does not hold: "late +2", "missed", ...

    def to_json(self) -> dict[str, object]:
        return {
            "expectation": self.expectation,
            "held": self.held,
            "reason": self.reason,
            "log_lines": list(self.log_lines),
            "line_count": self.line_count,
            "label": self.label,
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> ExpectationOutcome:
        log_lines = tuple(payload["log_lines"])
        return cls(
            expectation=payload["expectation"],
            held=payload["held"],
            reason=payload["reason"],
            log_lines=log_lines,
            # Results written before these fields existed still read.
            line_count=payload.get("line_count", len(log_lines)),
            label=payload.get("label", ""),
        )


def violation_lines(violations: Sequence[ViolationRecord]) -> tuple[str, ...]:
    """The first MAX_LINES_PER_OUTCOME lines, as an outcome keeps them."""
    return tuple(v.format() for v in violations[:MAX_LINES_PER_OUTCOME])
