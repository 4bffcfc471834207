"""Threshold strings such as '>=1', as scenarios write them for SWA divergence counters."""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable

_OPERATORS: dict[str, Callable[[int, int], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_TEXT = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(-?\d+)\s*$")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Comparison:
    operator: str
    bound: int

    @classmethod
    def parse(cls, text: str) -> Comparison:
        match = _TEXT.match(text)
        if match is None:
            raise ValueError(f"{text!r} is not a comparison; write an operator and an integer, e.g. '>=1'")
        return cls(operator=match[1], bound=int(match[2]))

    def holds(self, value: int) -> bool:
        return _OPERATORS[self.operator](value, self.bound)

    def __str__(self) -> str:
        return f"{self.operator}{self.bound}"
