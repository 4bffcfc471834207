"""The engine bug modes an engine re-enacts (``EngineConfig.bugs``, ``kv_canary_contract.ENGINE_BUGS``).

Each mechanism is a branch in the scheduler's, the KV-cache manager's or the radix cache's own code
path that asks ``bugs.on(name)``; everything else runs as without the bug, so the engine misbehaves
only where, and when, the report says it did.
"""

from __future__ import annotations

from collections.abc import Iterable

from kv_canary_contract import engine_bug


class EngineBugs:
    def __init__(self, names: Iterable[str] = ()) -> None:
        self._on = frozenset(engine_bug(name).name for name in names)  # KeyError naming the known bugs

    def on(self, name: str) -> bool:
        engine_bug(name)  # a misspelt mechanism fails loudly whether or not it is on
        return name in self._on

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._on))


NO_BUGS = EngineBugs()
