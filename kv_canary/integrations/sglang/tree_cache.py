"""SGLang 0.5.23's radix caches, walked for the canary's sweep.

Three shapes exist:

* ``RadixCache`` and its subclasses (``PureSWARadixCache`` for all-window models): ``TreeNode``
  objects with ``key`` (a ``RadixKey``), ``value``, ``lock_ref`` and ``children``, the walker's
  node protocol as it is;
* ``UnifiedRadixCache`` (the default tree, for full and hybrid-SWA models) on its Python tree
  core: ``UnifiedTreeNode`` objects keep the full-pool slots and lock of each component in
  ``component_data[ComponentType]``; an SWA tombstone is a node whose SWA component value is None.
  They are read through ``SglangNodeView`` (``node_view.py``), in the walker's node shape;
* ``UnifiedRadixCache`` on its Rust tree core (SGLang's default backend): its nodes live in Rust
  (``root_node`` raises NotImplementedError), so the tree core's own flat walk
  (``walk_for_kv_canary``: slot, position, previous slot) is used. It carries no tokens, so the
  sweep's token check is off there; set ``SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND=python`` to
  keep it.
"""

from __future__ import annotations

from typing import Any

import torch

from kv_canary.engine_protocols import RadixWalk
from kv_canary.integrations.sglang.node_view import SglangNodeView
from kv_canary.manager import CanaryManager
from kv_canary.plans import PREV_SEQUENCE_START, TOKEN_UNKNOWN
from kv_canary.sweep.radix_walker import walk_radix_cache


def attach_tree_cache(manager: CanaryManager, tree_cache: Any) -> SglangTreeCache:
    """Let the canary's periodic sweep walk SGLang's radix cache (``scheduler.tree_cache``)."""
    walker = SglangTreeCache(tree_cache)
    manager.attach_prefix_cache(walker)
    return walker


class SglangTreeCache:
    """A self-walking prefix cache (``engine_protocols.SelfWalkingCache``) over one SGLang tree cache."""

    def __init__(self, tree_cache: Any) -> None:
        self.tree_cache = tree_cache  # SGLang's RadixCache (or a subclass) or UnifiedRadixCache: untyped

    def radix_walk(self, *, device: torch.device, unlocked_only: bool, swa_resident_only: bool) -> RadixWalk:
        tree_core = getattr(self.tree_cache, "tree_core", None)
        if tree_core is None:
            return walk_radix_cache(
                self.tree_cache, device=device, unlocked_only=unlocked_only, swa_resident_only=swa_resident_only
            )
        try:
            root = tree_core.root_node
        except NotImplementedError:
            return _flat_walk(
                tree_core, device=device, unlocked_only=unlocked_only, swa_resident_only=swa_resident_only
            )
        return walk_radix_cache(
            _ViewedTree(SglangNodeView(root)),
            device=device,
            unlocked_only=unlocked_only,
            swa_resident_only=swa_resident_only,
        )


class _ViewedTree:
    __slots__ = ("root_node",)

    def __init__(self, root_node: SglangNodeView) -> None:
        self.root_node = root_node


def _flat_walk(tree_core: Any, *, device: torch.device, unlocked_only: bool, swa_resident_only: bool) -> RadixWalk:
    walk = tree_core.walk_for_kv_canary(unlocked_only, swa_resident_only)
    slots = walk.slot_indices.to(device=device, dtype=torch.int64)
    prev_slots = walk.prev_slot_indices.to(device=device, dtype=torch.int64)
    # The tree core marks a sequence's first token with -1; the canary's plans use 0.
    prev_slots = torch.where(prev_slots < 0, PREV_SEQUENCE_START, prev_slots)
    return RadixWalk(
        slots=slots,
        positions=walk.positions.to(device=device, dtype=torch.int64),
        prev_slots=prev_slots,
        tokens=torch.full_like(slots, TOKEN_UNKNOWN),
    )
