"""``kv_canary_stats ...``: the periodic summary line."""

from __future__ import annotations

import dataclasses
import re

from kv_canary.log_lines.line_search import LineSearch

_LINE = re.compile(
    r"kv_canary_stats step=(?P<step>\d+) protected_tokens=(?P<protected_tokens>\d+) "
    r"sweep_passes=(?P<sweep_passes>\d+) violations=(?P<violations>\d+) "
    r"launch_tags_active=(?P<active>\d+)/(?P<expected>\d+)(?: violations_repeated=(?P<repeated>\d+))?"
)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CanaryStatsLog(LineSearch):
    step: int
    protected_tokens: int  # canary records verified so far, over every launch tag
    sweep_passes: int
    violations: int  # violation rows ever recorded, overflowed ones included
    launch_tags_active: int  # expected launch tags whose kernels have run
    launch_tags_expected: int
    # Violations the reporter counted but did not log again (``ViolationRepeatsLog``); the field is
    # appended to the line only once there are any, so a clean log keeps the original format.
    violations_repeated: int = 0

    def format(self) -> str:
        line = (
            f"kv_canary_stats step={self.step} protected_tokens={self.protected_tokens} "
            f"sweep_passes={self.sweep_passes} violations={self.violations} "
            f"launch_tags_active={self.launch_tags_active}/{self.launch_tags_expected}"
        )
        return line + (f" violations_repeated={self.violations_repeated}" if self.violations_repeated else "")

    @classmethod
    def parse(cls, line: str) -> CanaryStatsLog | None:
        match = _LINE.search(line)
        if match is None:
            return None
        return cls(
            step=int(match["step"]),
            protected_tokens=int(match["protected_tokens"]),
            sweep_passes=int(match["sweep_passes"]),
            violations=int(match["violations"]),
            launch_tags_active=int(match["active"]),
            launch_tags_expected=int(match["expected"]),
            violations_repeated=int(match["repeated"] or 0),
        )
