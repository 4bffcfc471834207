"""The launch tags each model mode can log, from what the contract says the mode guards.

The launch tags a mode can log follow from its guarded (pool group, K/V half) pairs; a scenario
pattern that matches none of them can never be met in that mode.
"""

from __future__ import annotations

from kv_canary.launch_tags import KvHalf, LaunchTag, Phase, PoolGroupKind
from kv_canary_contract import MODES, model_mode


def _guarded_halves(mode: str) -> frozenset[tuple[PoolGroupKind, KvHalf]]:
    return frozenset(
        (PoolGroupKind(group.upper()), KvHalf(half.upper())) for group, half in MODES[model_mode(mode)].guarded
    )


def mode_has_full_and_swa_groups(mode: str) -> bool:
    return {group for group, _ in _guarded_halves(mode)} == set(PoolGroupKind)


def launch_tags_of_mode(mode: str, *, sweep: bool) -> list[str]:
    """Tags a mode can log; SWEEP tags only when the radix sweep is on."""
    return [
        tag.name
        for tag in LaunchTag
        if (tag.group, tag.half) in _guarded_halves(mode) and (sweep or tag.phase is not Phase.SWEEP)
    ]
