"""What a scenario rule finds: a problem at a key of the scenario mapping."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

from harness.scenario.model import Scenario
from harness.scenario.problems import Location


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RuleProblem:
    loc: Location
    message: str


Rule = Callable[[Scenario], Iterator[RuleProblem]]
