"""The fault vocabulary: every kind, the target keys and values it takes, what it needs from the engine.

A kind is its name in ``FaultKind`` plus one ``FaultKindRule`` in ``FAULT_KIND_RULES``; every rule that
depends on the kind (which target keys apply, defaults, which modes can take it) reads that entry.
docs/FAULTS.md describes what each kind corrupts and what catches it.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

from kv_canary_contract.engine_settings import feature_enabled
from kv_canary_contract.modes import MODES, POOL_GROUPS, ModelMode, PoolGroup

FaultKind = Literal[
    "none",
    "corrupt_kv_bytes",
    "corrupt_canary",
    "req_to_token_remap",
    "evict_radix_node",
    "double_free",
    "remap_swa_slot",
    "stale_prefix",
    "swap_next_token",
    "skip_canary_write",
    "lost_write",
    "misdirected_write",
    "transfer_drop_group",
    "transfer_misorder_pages",
    "transfer_foreign_pages",
    "restore_wrong_slots",
    "stale_swa_translation",
    "host_copy_overwrite",
    "draft_position_shift",
]
FAULT_KINDS: tuple[FaultKind, ...] = typing.get_args(FaultKind)

# The target keys and their values. A key a fault leaves out takes the kind's default.
RequestState = Literal["running", "finished"]
SlotState = Literal["used", "cached_unused", "post_forward"]
NodeChoice = Literal["deepest_locked", "any_unlocked"]
PositionChoice = Literal["in_window", "out_of_window"]
EngineRank = Literal[0, 1, 2, 3, 4, 5, 6, 7]  # up to MAX_RANKS; below the engine's tp x pp (fault_problems)
TARGET_VALUES: Mapping[str, tuple[str | int, ...]] = MappingProxyType(
    {
        "group": POOL_GROUPS,  # the pool group the corrupted object belongs to
        "request": typing.get_args(RequestState),  # whose slot: a running request's, or a finished one's
        "slot": typing.get_args(SlotState),  # live; cached, no request holds it; written by the last forward
        "node": typing.get_args(NodeChoice),  # which radix node
        "position": typing.get_args(PositionChoice),  # narrows the positions of live slots
        "rank": typing.get_args(EngineRank),  # whose own state: its shard of the KV pool, its canary records
    }
)
# Kinds that take ``rank`` corrupt one rank's own state; the others the scheduler's, which every rank shares.
RANK_KEY = "rank"

# Which request holds a slot of each state, and the slot state a request's target defaults to.
SLOT_HOLDER: Mapping[str, RequestState] = MappingProxyType(
    {"used": "running", "post_forward": "running", "cached_unused": "finished"}
)
SLOT_OF_REQUEST: Mapping[str, SlotState] = MappingProxyType({"running": "used", "finished": "cached_unused"})
POSITIONED_SLOTS: tuple[SlotState, ...] = ("used",)  # target.position picks among positions a request reads


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class FaultKindRule:
    # target key -> accepted values, default first ("group" defaults to the mode's default group
    # where the kind accepts it)
    targets: Mapping[str, tuple[str | int, ...]]
    injects: bool = True
    needs_swa_pool: bool = False
    # Corrupts K/V bytes or canary records of the target group, so the group must hold them: a
    # group the canary guards in that mode.
    touches_guarded_state: bool = False
    # May take out-of-window positions in group swa: it gives such a position an SWA slot.
    gives_swa_slots: bool = False
    needs_canary: bool = False  # corrupts the canary's own records
    # The engine setting (kv_canary_contract.FEATURE_SETTINGS) whose feature the kind corrupts:
    # a KV transfer, the host tier, speculative decoding. None: every engine has what it corrupts.
    needs_setting: str | None = None

    @property
    def per_rank(self) -> bool:
        """Corrupts one rank's own state (its KV shard, its canary records), picked by target.rank."""
        return RANK_KEY in self.targets

    def runs_in(self, mode: ModelMode, engine: Mapping[str, object] | None = None) -> bool:
        """Whether it injects in ``mode``; with ``engine`` settings, also whether they turn on its feature."""
        if not self.injects or (self.needs_swa_pool and not MODES[mode].has_swa_pool):
            return False
        return engine is None or self.needs_setting is None or feature_enabled(engine, self.needs_setting)


# A live or cached slot, as a kind that frees it sees it (the scheduler's, shared by every rank) ...
_SLOT_TARGETS = MappingProxyType(
    {
        "group": POOL_GROUPS,
        "slot": ("used", "cached_unused"),
        "request": TARGET_VALUES["request"],
        "position": TARGET_VALUES["position"],
    }
)
# ... and as a kind that corrupts what one rank holds for it (its K/V shard, its canary records).
_RANK_SLOT_TARGETS = MappingProxyType({**_SLOT_TARGETS, RANK_KEY: TARGET_VALUES["rank"]})

FAULT_KIND_RULES: Mapping[FaultKind, FaultKindRule] = MappingProxyType(
    {
        "none": FaultKindRule(targets={}, injects=False),
        "corrupt_kv_bytes": FaultKindRule(
            targets={**_RANK_SLOT_TARGETS, "slot": TARGET_VALUES["slot"]}, touches_guarded_state=True
        ),
        "corrupt_canary": FaultKindRule(targets=_RANK_SLOT_TARGETS, touches_guarded_state=True, needs_canary=True),
        "req_to_token_remap": FaultKindRule(
            targets={"group": POOL_GROUPS, "request": ("running",), "position": TARGET_VALUES["position"]}
        ),
        "evict_radix_node": FaultKindRule(
            targets={"group": POOL_GROUPS, "node": TARGET_VALUES["node"], "request": ("running",)}
        ),
        "double_free": FaultKindRule(targets=_SLOT_TARGETS),
        "remap_swa_slot": FaultKindRule(
            targets={"group": ("swa",), "request": ("running",), "position": TARGET_VALUES["position"]},
            needs_swa_pool=True,
            gives_swa_slots=True,
        ),
        "stale_prefix": FaultKindRule(targets={"group": POOL_GROUPS, "node": ("any_unlocked",)}),
        "swap_next_token": FaultKindRule(targets={"request": ("running",)}),
        "skip_canary_write": FaultKindRule(targets={RANK_KEY: TARGET_VALUES["rank"]}, needs_canary=True),
        # A forward's K/V write of one token in one layer of the group: skipped, or landed in
        # another live slot. Only the lost-write check sees the row left unwritten.
        "lost_write": FaultKindRule(
            targets={"group": POOL_GROUPS, "request": ("running",)}, touches_guarded_state=True
        ),
        "misdirected_write": FaultKindRule(
            targets={"group": POOL_GROUPS, "request": ("running",)}, touches_guarded_state=True
        ),
        # A prefill-to-decode KV transfer: one pool group's buffers left out, a group's page list
        # misordered, or the pages of another request delivered (every group).
        "transfer_drop_group": FaultKindRule(
            targets={"group": POOL_GROUPS}, touches_guarded_state=True, needs_setting="disaggregation"
        ),
        "transfer_misorder_pages": FaultKindRule(
            targets={"group": POOL_GROUPS}, touches_guarded_state=True, needs_setting="disaggregation"
        ),
        "transfer_foreign_pages": FaultKindRule(targets={}, needs_setting="disaggregation"),
        # The host tier: a load-back into other slots than the node's, a full-to-SWA translation left
        # as it was before the offload, a host copy overwritten by another prompt's while offloaded.
        "restore_wrong_slots": FaultKindRule(targets={}, needs_setting="host_tier_tokens"),
        "stale_swa_translation": FaultKindRule(
            targets={"group": ("swa",)}, needs_swa_pool=True, needs_setting="host_tier_tokens"
        ),
        "host_copy_overwrite": FaultKindRule(targets={}, needs_setting="host_tier_tokens"),
        # Speculative decoding: a verify window written at positions off by one.
        "draft_position_shift": FaultKindRule(targets={"request": ("running",)}, needs_setting="speculative_num_steps"),
    }
)


def fault_kinds_in_mode(mode: ModelMode, engine: Mapping[str, object] | None = None) -> tuple[FaultKind, ...]:
    """The kinds that inject something in ``mode`` (``none`` excluded), in contract order; with
    ``engine`` settings, only those the settings give something to corrupt (their feature on)."""
    return tuple(kind for kind, rule in FAULT_KIND_RULES.items() if rule.runs_in(mode, engine))


def default_group(kind: FaultKind, mode: ModelMode) -> PoolGroup | None:
    accepted = FAULT_KIND_RULES[kind].targets.get("group")
    if accepted is None:
        return None
    preferred = MODES[mode].default_fault_group
    return preferred if preferred in accepted else typing.cast(PoolGroup, accepted[0])
