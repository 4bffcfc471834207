"""The host-side observers an install runs after every forward, chosen by the config."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kv_canary.manager import CanaryManager, HostObserver


def build_default_observers(manager: CanaryManager) -> list[HostObserver]:
    return []
