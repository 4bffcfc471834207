"""What each model mode guards, as DESIGN.md's mode table fixes it.

The launch tags a mode can log follow from its guarded (pool group, K/V half) pairs; a scenario
pattern that matches none of them can never be met in that mode.
"""

from __future__ import annotations

from kv_canary.launch_tags import KvHalf, LaunchTag, Phase, PoolGroupKind

_GUARDED_HALVES: dict[str, frozenset[tuple[PoolGroupKind, KvHalf]]] = {
    "mha": frozenset({(PoolGroupKind.FULL, KvHalf.K), (PoolGroupKind.FULL, KvHalf.V)}),
    "swa": frozenset({(group, half) for group in PoolGroupKind for half in KvHalf}),
    # DSv4's SWA sub-pool holds K only; its compressed pools are not guarded.
    "dsv4": frozenset({(PoolGroupKind.SWA, KvHalf.K)}),
}


def mode_has_swa_group(mode: str) -> bool:
    return any(group is PoolGroupKind.SWA for group, _ in _GUARDED_HALVES[mode])


def mode_has_full_and_swa_groups(mode: str) -> bool:
    return {group for group, _ in _GUARDED_HALVES[mode]} == set(PoolGroupKind)


def launch_tags_of_mode(mode: str, *, sweep: bool) -> list[str]:
    """Tags a mode can log; SWEEP tags only when the radix sweep is on."""
    return [
        tag.name
        for tag in LaunchTag
        if (tag.group, tag.half) in _GUARDED_HALVES[mode] and (sweep or tag.phase is not Phase.SWEEP)
    ]
