"""Jobs rank 0 runs on every rank between forwards (``RankGroup.run``, ``Engine.on_ranks``)."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

from kv_canary import KvCanaryViolationError


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CanaryDrain:
    """One rank's canary, drained: every violation recorded so far."""

    count: int  # every violation recorded, ring rows that overflowed before a drain included
    lines: list[str]


def drain_canary(runner: Any) -> CanaryDrain | None:
    """Report what this rank's canary has staged; None when the canary is off."""
    canary = runner.canary
    if canary is None:
        return None
    # Mode raise: the rows were recorded before it raised, and are returned below.
    with contextlib.suppress(KvCanaryViolationError):
        canary.flush()
    return CanaryDrain(
        count=canary.stats_snapshot()["violations_total"],
        lines=[record.format() for record in canary.violations],
    )
