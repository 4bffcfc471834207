"""The engine's radix-cache interface on SGLang's ``RadixCache`` (mha) or ``UnifiedRadixCache`` (swa)."""

from __future__ import annotations

import collections
import typing
import weakref
from array import array
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams, MatchPrefixParams
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey
from sglang.srt.mem_cache.unified_cache.components import ComponentType
from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

from kv_canary.engine_protocols import RadixWalk
from kv_canary.integrations.sglang import SglangNodeView, SglangTreeCache
from mock_models.engine.memory_protocols import EngineRadixNode, EvictionRefusedError, InsertResult, MatchResult
from mock_models.engine.radix_cache import descendants
from mock_models.engine.sglang_backend.allocators import free_to_front


class SglangRadixCache:
    """Nodes are handed out as ``SglangNodeView``s (the same view for the same node each time), so
    the fault injector can pick them. ``RadixCache``'s can be force-evicted (through its own
    one-leaf eviction step, private in SGLang), and its sizes are counted by walking the tree, so
    they stay true after a forced eviction. ``UnifiedRadixCache`` (on its Python tree core) hands
    out ``NodeId``s, translated here; it has no step that evicts a locked node. The canary's sweep
    walks either tree through ``radix_walk``.
    """

    def __init__(self, tree: RadixCache | UnifiedRadixCache, allocator: Any) -> None:
        self.tree = tree
        self.allocator = allocator
        self.swa_enabled = isinstance(tree, UnifiedRadixCache) and ComponentType.SWA in tree.components
        self._walker = SglangTreeCache(tree)
        self._locks: dict[SglangNodeView, list[Any]] = collections.defaultdict(list)
        self._views: weakref.WeakKeyDictionary[Any, SglangNodeView] = weakref.WeakKeyDictionary()

    # -- nodes --------------------------------------------------------------------------------------

    def view(self, node: Any) -> EngineRadixNode:
        """The view of a tree node or ``NodeId`` (the same view each time).

        An engine node's slots are always on the device: SGLang's ``value`` is None only for a node
        its host cache evicted, and this backend runs SGLang without one.
        """
        if self.swa_enabled and isinstance(node, int):
            node = self.tree.tree_core.node_by_id(node)
        view = self._views.get(node)
        if view is None:
            view = self._views[node] = SglangNodeView(node, view_of=self._view_of)
        return typing.cast(EngineRadixNode, view)

    def _view_of(self, node: Any) -> SglangNodeView:
        return typing.cast(SglangNodeView, self.view(node))

    @property
    def root_node(self) -> EngineRadixNode:
        return self.view(self.tree.root_node)

    def nodes(self) -> Iterator[EngineRadixNode]:
        """Every node but the root, parents before children."""
        return descendants(self.root_node)

    def radix_walk(self, *, device: torch.device, unlocked_only: bool, swa_resident_only: bool) -> RadixWalk:
        return self._walker.radix_walk(device=device, unlocked_only=unlocked_only, swa_resident_only=swa_resident_only)

    # -- lookup and insertion -----------------------------------------------------------------------

    def match_prefix(self, key: Sequence[int]) -> MatchResult:
        match = self.tree.match_prefix(MatchPrefixParams(key=_key(key)))
        indices = self.tree.path_device_indices(match.last_device_node)[: match.device_prefix_len]
        return MatchResult(device_indices=indices.to(torch.int64), last_node=self.view(match.last_device_node))

    def match_len(self, key: Sequence[int]) -> int:
        """Tokens of ``key`` the tree holds, SWA residency aside (the unified tree's match is window-gated)."""
        if self.swa_enabled:
            return int(self.tree.tree_core.match_full_device_prefix(_key(key))[0])
        return int(self.tree.match_prefix(MatchPrefixParams(key=_key(key))).device_prefix_len)

    def insert(self, key: Sequence[int], value: torch.Tensor, *, swa_resident_from: int = 0) -> InsertResult:
        """As the engine's ``RadixCache.insert``. ``RadixCache`` leaves the caller's duplicate slots to the
        caller; ``UnifiedRadixCache`` frees them itself, or adopts them into a node whose SWA rows it
        revives, so it reports ``prefix_len`` 0: nothing is left for the caller to free."""
        value = value.to(torch.int64).clone()
        if not self.swa_enabled:
            result = self.tree.insert(InsertParams(key=_key(key), value=value))
            return InsertResult(prefix_len=result.prefix_len, last_node=self.view(result.last_device_node))
        result = self.tree.insert(
            InsertParams(
                key=_key(key),
                value=value,
                prev_prefix_len=self._shared_len(key, value),
                component_evicted_seqlens={ComponentType.SWA: swa_resident_from},
            )
        )
        return InsertResult(prefix_len=0, last_node=self.view(result.last_device_node))

    def _shared_len(self, key: Sequence[int], value: torch.Tensor) -> int:
        """Leading positions whose slots are already the tree's own: the caller's protected prefix."""
        matched, node, _ = self.tree.tree_core.match_full_device_prefix(_key(key))
        tree_slots = self.tree.path_device_indices(node)[:matched].to(value.device)
        differs = (tree_slots != value[:matched]).nonzero()  # host read: once per insert, not per token
        return int(differs[0]) if differs.numel() else int(matched)

    # -- locks --------------------------------------------------------------------------------------

    def inc_lock_ref(self, node: EngineRadixNode) -> None:
        view = self._own(node)
        self._locks[view].append(self.tree.lock(view.node.id if view.unified else view.node))

    def dec_lock_ref(self, node: EngineRadixNode) -> None:
        locks = self._locks.get(self._own(node))
        if not locks:
            raise RuntimeError(
                f"RadixCache.dec_lock_ref: node {node!r} is not locked here; a request unlocked "
                "a prefix it did not lock"
            )
        self.tree.unlock(locks.pop())

    # -- eviction -----------------------------------------------------------------------------------

    def evict(self, num_tokens: int) -> int:
        return int(self.tree.evict(EvictParams(num_tokens=num_tokens)).num_tokens_evicted)

    def evict_swa(self, num_tokens: int) -> int:
        return int(self.tree.evict(EvictParams(swa_num_tokens=num_tokens)).swa_num_tokens_evicted)

    def evict_node(self, node: EngineRadixNode, *, force: bool = False) -> None:
        """Free one leaf now through SGLang's own leaf removal. ``force``: even while locked (a fault)."""
        view = self._own(node)
        if view.children:
            raise ValueError(f"RadixCache.evict_node: node {view.id} has children; evict a leaf")
        if view.lock_ref > 0 and not force:
            raise ValueError(f"RadixCache.evict_node: node {view.id} is locked (lock_ref {view.lock_ref})")
        if self.swa_enabled:
            # UnifiedRadixCache's one-leaf step (tree_core.evict_device_leaf) refuses a locked leaf.
            raise EvictionRefusedError(
                "mem_backend sglang: SGLang's UnifiedRadixCache cannot force-evict a node; "
                "evict_radix_node in swa needs mem_backend mock"
            )
        if force:  # a fault: its slots are handed out next, as a busy engine would (see free_to_front)
            free_to_front(self.allocator, view.node.value.tolist())
        else:
            self.allocator.free(view.node.value)
        self.tree._delete_leaf(view.node)  # RadixCache's eviction step, applied to one chosen leaf

    def reset(self) -> None:
        """Flush when idle, as SGLang's scheduler does: an empty tree and every slot free again."""
        if any(self._locks.values()):
            raise RuntimeError("RadixCache.reset: nodes are locked by running requests; flush only when idle")
        self.tree.reset()
        self.allocator.clear()

    # -- sizes --------------------------------------------------------------------------------------

    def evictable_size(self) -> int:
        if self.swa_enabled:
            return int(self.tree.evictable_size())
        return sum(len(node.key) for node in self.nodes() if node.lock_ref == 0)

    def swa_evictable_size(self) -> int:
        return int(self.tree.swa_evictable_size())

    def _own(self, node: object) -> SglangNodeView:
        if not isinstance(node, SglangNodeView):
            raise TypeError(f"SglangRadixCache: {node!r} is not a node this cache handed out")
        return node


def _key(tokens: Sequence[int]) -> RadixKey:
    return RadixKey(array("q", tokens))
