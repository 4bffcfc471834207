"""'|'-separated glob patterns over launch tags and fail reasons, as scenarios write them."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable


def alternatives(pattern: str) -> list[str]:
    return pattern.split("|")


def matches(pattern: str, name: str) -> bool:
    # fnmatchcase: tags are upper case and reasons lower case, so 'head_*' must not match HEAD_K_FULL
    return any(fnmatch.fnmatchcase(name, alternative) for alternative in alternatives(pattern))


def matches_any(pattern: str, names: Iterable[str]) -> bool:
    return any(matches(pattern, name) for name in names)
