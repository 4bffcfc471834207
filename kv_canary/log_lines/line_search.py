"""Searching a log text for lines of one format, shared by every log-line class."""

from __future__ import annotations

from typing import Self


class LineSearch:
    """Mixin: ``find_all``/``find_last`` over ``cls.parse``, which each format defines."""

    __slots__ = ()

    @classmethod
    def parse(cls, line: str) -> Self | None:
        raise NotImplementedError

    @classmethod
    def find_all(cls, text: str) -> list[Self]:
        return [parsed for line in text.splitlines() if (parsed := cls.parse(line)) is not None]

    @classmethod
    def find_last(cls, text: str) -> Self | None:
        found = cls.find_all(text)
        return found[-1] if found else None
