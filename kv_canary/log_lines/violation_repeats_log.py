"""``kv_canary violation_repeats: ...``: violations reported again during an interval, counted, not repeated.

A corrupted slot that many requests read fails every forward that reads it. The violation
reporter logs the first violation of each (slot, launch tag, fail reasons) of an interval in
full and only counts the repeats; at the end of the interval this line says how many were held
back, of how many keys, and which keys repeated most.
"""

from __future__ import annotations

import dataclasses
import re

from kv_canary.log_lines.line_search import LineSearch

_PREFIX = "kv_canary violation_repeats: "
_LINE = re.compile(
    r"kv_canary violation_repeats: repeats=(?P<repeats>\d+) keys=(?P<keys>\d+) "
    r"steps=(?P<first_step>-?\d+)\.\.(?P<last_step>-?\d+) top=(?P<top>\S*)(?: rank=(?P<rank>\d+))?"
)
_TOP_ENTRY = re.compile(r"(?P<slot>-?\d+):(?P<tag>[A-Z0-9_]+):(?P<reasons>[a-z_]+(?:\+[a-z_]+)*)x(?P<count>\d+)")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RepeatedViolation:
    slot_idx: int
    launch_tag: str
    fail_reasons: tuple[str, ...]
    repeats: int

    def format(self) -> str:
        return f"{self.slot_idx}:{self.launch_tag}:{'+'.join(self.fail_reasons)}x{self.repeats}"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ViolationRepeatsLog(LineSearch):
    repeats: int  # violations not logged again during the interval
    keys: int  # distinct (slot, launch tag, fail reasons) that repeated
    first_step: int  # the steps of the repeated violations
    last_step: int
    top: tuple[RepeatedViolation, ...]  # the keys that repeated most, most first
    rank: int | None = None  # the engine rank whose canary held them back; None: a one-rank engine

    def format(self) -> str:
        top = ",".join(entry.format() for entry in self.top)
        line = f"{_PREFIX}repeats={self.repeats} keys={self.keys} steps={self.first_step}..{self.last_step} top={top}"
        return line + (f" rank={self.rank}" if self.rank is not None else "")

    @classmethod
    def parse(cls, line: str) -> ViolationRepeatsLog | None:
        match = _LINE.search(line)
        if match is None:
            return None
        top = []
        for entry in filter(None, match["top"].split(",")):
            parsed = _TOP_ENTRY.fullmatch(entry)
            if parsed is None:
                return None
            top.append(
                RepeatedViolation(
                    slot_idx=int(parsed["slot"]),
                    launch_tag=parsed["tag"],
                    fail_reasons=tuple(parsed["reasons"].split("+")),
                    repeats=int(parsed["count"]),
                )
            )
        return cls(
            repeats=int(match["repeats"]),
            keys=int(match["keys"]),
            first_step=int(match["first_step"]),
            last_step=int(match["last_step"]),
            top=tuple(top),
            rank=int(match["rank"]) if match["rank"] is not None else None,
        )
