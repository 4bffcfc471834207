"""``kv_canary violation: ...``: one line per violation row the reporter drains.

An engine that runs several ranks (tensor or pipeline parallel) has one canary per rank; its lines
end with ``rank=<int>``, a key added after the frozen ones. Lines without it (one rank) parse with
``rank`` None.
"""

from __future__ import annotations

import dataclasses
import re

from kv_canary.launch_tags import FailReason
from kv_canary.log_lines.line_search import LineSearch

_PREFIX = "kv_canary violation: "
_LINE = re.compile(
    r"kv_canary violation: launch_tag=(?P<launch_tag>[A-Z0-9_]+) "
    r"fail_reason=(?P<fail_reason>[a-z_]+(?:\+[a-z_]+)*) slot_idx=(?P<slot_idx>-?\d+) "
    r"position=(?P<position>-?\d+) stored_token=(?P<stored_token>-?\d+) "
    r"expected_token=(?P<expected_token>-?\d+) step=(?P<step>-?\d+)(?: rank=(?P<rank>\d+))?"
)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ViolationRecord(LineSearch):
    launch_tag: str
    fail_reasons: tuple[str, ...]
    slot_idx: int
    position: int
    stored_token: int
    expected_token: int
    step: int
    rank: int | None = None  # the engine rank whose canary recorded it; None: a one-rank engine

    def __post_init__(self) -> None:
        if not self.fail_reasons:
            raise ValueError("a violation has at least one fail reason")
        FailReason.from_log_names(list(self.fail_reasons))  # unknown names raise KeyError here

    def format(self) -> str:
        return (
            f"{_PREFIX}launch_tag={self.launch_tag} fail_reason={'+'.join(self.fail_reasons)} "
            f"slot_idx={self.slot_idx} position={self.position} stored_token={self.stored_token} "
            f"expected_token={self.expected_token} step={self.step}"
            + (f" rank={self.rank}" if self.rank is not None else "")
        )

    @classmethod
    def parse(cls, line: str) -> ViolationRecord | None:
        match = _LINE.search(line)
        if match is None:
            return None
        return cls(
            launch_tag=match["launch_tag"],
            fail_reasons=tuple(match["fail_reason"].split("+")),
            slot_idx=int(match["slot_idx"]),
            position=int(match["position"]),
            stored_token=int(match["stored_token"]),
            expected_token=int(match["expected_token"]),
            step=int(match["step"]),
            rank=int(match["rank"]) if match["rank"] is not None else None,
        )
