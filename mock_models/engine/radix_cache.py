"""The radix prefix cache: token-id keys, full-pool slot values, lock refs and LRU eviction.

The node shape is SGLang's (the canary's radix sweep walks it): ``root_node``, and on each node
``children``, ``parent``, ``key`` (token ids), ``value`` (int64 tensor of full-pool slots on the
engine's device, one per key token), ``lock_ref``, ``last_access_time`` and ``swa_tombstone``.
Keys are whole pages: every node boundary is page-aligned.

With an SWA sub-pool, a node either holds SWA rows for all its tokens or none
(``swa_tombstone``; its full slots stay). A locked node keeps its SWA rows; an unlocked one may
be tombstoned under SWA pressure. ``match_prefix`` only returns a prefix whose last
``swa_window`` tokens are SWA-resident, which is what a request's first forward reads.

Sizes are counted by walking the tree rather than kept as counters, so they stay true even after
a fault injector has force-evicted a locked node.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import typing
from collections.abc import Iterator, Sequence
from typing import TypeVar

import torch

from mock_models.engine.allocator import PagedTokenAllocator
from mock_models.engine.bugs import NO_BUGS, EngineBugs
from mock_models.engine.memory_protocols import EngineRadixNode, InsertResult, MatchResult
from mock_models.engine.swa_allocator import SWATokenAllocator

_node_ids = itertools.count()


@dataclasses.dataclass(eq=False, slots=True)
class TreeNode:
    key: list[int]
    value: torch.Tensor  # int64 [len(key)] full-pool slots
    parent: TreeNode | None = None
    children: dict[tuple[int, ...], TreeNode] = dataclasses.field(default_factory=dict)
    lock_ref: int = 0
    last_access_time: int = 0  # a tick of the cache's clock: deterministic LRU order
    swa_tombstone: bool = False
    id: int = dataclasses.field(default_factory=lambda: next(_node_ids))


class RadixCache:
    def __init__(
        self,
        *,
        page_size: int,
        device: torch.device | str,
        full_allocator: PagedTokenAllocator,
        swa_allocator: SWATokenAllocator | None = None,
        swa_window: int | None = None,
        bugs: EngineBugs = NO_BUGS,
    ) -> None:
        if (swa_allocator is None) != (swa_window is None):
            raise ValueError("RadixCache: pass swa_allocator and swa_window together (SWA modes) or neither")
        self.page_size = page_size
        self.device = torch.device(device)
        self.full_allocator = full_allocator
        self.swa_allocator = swa_allocator
        self.swa_window = swa_window
        self.bugs = bugs
        self._clock = itertools.count(1)
        self.root_node = self._new_root()

    @property
    def swa_enabled(self) -> bool:
        return self.swa_allocator is not None

    def _new_root(self) -> TreeNode:
        return TreeNode(key=[], value=torch.empty(0, dtype=torch.int64, device=self.device), lock_ref=1)

    def reset(self) -> None:
        """Flush: free every slot the tree holds. Only valid when no request holds a lock."""
        locked = [node for node in self.nodes() if node.lock_ref > 0]
        if locked:
            raise RuntimeError(
                f"RadixCache.reset: {len(locked)} nodes are locked by running requests; "
                "flush only when the engine is idle"
            )
        for node in self.nodes():
            self._free_slots(node)
        self.root_node = self._new_root()

    # -- lookup and insertion -------------------------------------------------------------------

    def match_prefix(self, key: Sequence[int]) -> MatchResult:
        path, _ = self._walk(key, split=True)
        return self._match_result(path)

    def _match_result(self, path: list[TreeNode]) -> MatchResult:
        """A matched path as ``match_prefix`` answers it (SWA: cut to its window-resident prefix), its
        nodes touched for LRU."""
        if self.swa_enabled:
            path = self._window_resident_prefix(path)
        tick = next(self._clock)
        for node in path:
            node.last_access_time = tick
        values = [node.value for node in path]
        indices = torch.cat(values) if values else self.root_node.value
        return MatchResult(device_indices=indices, last_node=path[-1] if path else self.root_node)

    def match_len(self, key: Sequence[int]) -> int:
        """Tokens of ``key`` the tree holds, SWA residency aside; changes nothing."""
        return self._walk(key, split=False)[1]

    def insert(self, key: Sequence[int], value: torch.Tensor, *, swa_resident_from: int = 0) -> InsertResult:
        """Insert the page-aligned part of ``key``; ``value`` holds a full slot per key token.

        In SWA mode, new tokens before ``swa_resident_from`` (page-aligned) have no SWA rows any
        more: they go into a tombstoned node.
        """
        end = self._align(len(key))
        key = list(key[:end])
        path, start = self._walk(key, split=True)
        node = path[-1] if path else self.root_node
        tick = next(self._clock)
        for matched in path:
            matched.last_access_time = tick
        if start < end:
            boundary = min(max(swa_resident_from, start), end) if self.swa_enabled else start
            if boundary > start:
                node = self._add_child(node, key[start:boundary], value[start:boundary], tick, tombstone=True)
            if boundary < end:
                node = self._add_child(node, key[boundary:end], value[boundary:end], tick, tombstone=False)
        return InsertResult(prefix_len=start, last_node=node)

    def _walk(self, key: Sequence[int], *, split: bool) -> tuple[list[TreeNode], int]:
        """Nodes along the longest page-aligned match of ``key``, and its length.

        With ``split`` a node matched only in part is split so the path ends on a boundary;
        without, the tree is left as is and the last node may be matched in part.
        """
        path: list[TreeNode] = []
        node, offset, end = self.root_node, 0, self._align(len(key))
        while offset < end:
            child = node.children.get(self._child_key(key, offset))
            if child is None:
                break
            matched = self._match_len(child.key, key, offset, end)
            if matched == 0:
                break
            partial = matched < len(child.key)
            if partial and split:
                child = self._split(child, matched)
            path.append(child)
            node, offset = child, offset + matched
            if partial:
                break
        return path, offset

    def _window_resident_prefix(self, path: list[TreeNode]) -> list[TreeNode]:
        """Cut ``path`` to the longest prefix whose last ``swa_window`` tokens all have SWA rows."""
        window = self.swa_window
        assert window is not None  # only called with an SWA pool, which comes with its window
        starts = list(itertools.accumulate((len(node.key) for node in path), initial=0))
        keep = len(path)
        while keep > 0:
            end = starts[keep]
            window_start = max(0, end - window)
            hole = next(
                (i for i in range(keep - 1, -1, -1) if path[i].swa_tombstone and starts[i + 1] > window_start), None
            )
            if hole is None:
                break
            keep = hole  # the prefix must end where the tombstone begins
        return path[:keep]

    def _split(self, child: TreeNode, at: int) -> TreeNode:
        parent = _parent_of(child)
        head = TreeNode(
            key=child.key[:at],
            value=child.value[:at],
            parent=parent,
            lock_ref=child.lock_ref,
            last_access_time=child.last_access_time,
            swa_tombstone=child.swa_tombstone,
        )
        child.key, child.value, child.parent = child.key[at:], child.value[at:], head
        head.children[self._child_key(child.key, 0)] = child
        parent.children[self._child_key(head.key, 0)] = head
        return head

    def _add_child(
        self, parent: TreeNode, key: list[int], value: torch.Tensor, tick: int, *, tombstone: bool
    ) -> TreeNode:
        node = TreeNode(
            key=key,
            value=value.to(self.device, torch.int64),
            parent=parent,
            last_access_time=tick,
            swa_tombstone=tombstone,
        )
        parent.children[self._child_key(key, 0)] = node
        return node

    # -- locks ----------------------------------------------------------------------------------

    def inc_lock_ref(self, node: EngineRadixNode) -> None:
        walk: TreeNode | None = _own(node)
        while walk is not self.root_node and walk is not None:
            walk.lock_ref += 1
            walk = walk.parent

    def dec_lock_ref(self, node: EngineRadixNode) -> None:
        walk: TreeNode | None = _own(node)
        while walk is not self.root_node and walk is not None:
            if walk.lock_ref <= 0:
                raise RuntimeError(
                    f"RadixCache.dec_lock_ref: node {walk.id} is not locked (lock_ref "
                    f"{walk.lock_ref}); a request unlocked a prefix it did not lock"
                )
            walk.lock_ref -= 1
            walk = walk.parent

    # -- eviction -------------------------------------------------------------------------------

    def evict(self, num_tokens: int) -> int:
        """Free unlocked leaves, least recently used first, until ``num_tokens`` slots are freed."""
        leaves = [self._lru_entry(node) for node in self.nodes() if not node.children and node.lock_ref == 0]
        heapq.heapify(leaves)
        freed = 0
        while freed < num_tokens and leaves:
            node = heapq.heappop(leaves)[-1]
            freed += len(node.key)
            if node.parent is self.root_node and self.bugs.on("eviction-leaves-phantom-prefix"):
                # vLLM#50630: the last node of a prefix (the whole prefix is gone) has its slots freed
                # but stays findable, so a later lookup of the prefix hits slots reused since.
                self._free_slots(node)
                continue
            parent = self._remove_leaf(node)
            if parent is not self.root_node and not parent.children and parent.lock_ref == 0:
                heapq.heappush(leaves, self._lru_entry(parent))
        return freed

    def evict_swa(self, num_tokens: int) -> int:
        """Tombstone unlocked nodes, LRU first, until ``num_tokens`` SWA slots are freed."""
        candidates = [self._lru_entry(node) for node in self.nodes() if node.lock_ref == 0 and not node.swa_tombstone]
        heapq.heapify(candidates)
        freed = 0
        while freed < num_tokens and candidates:
            node = heapq.heappop(candidates)[-1]
            self._swa_allocator().free_swa(node.value)
            node.swa_tombstone = True
            freed += len(node.key)
        return freed

    def _swa_allocator(self) -> SWATokenAllocator:
        if self.swa_allocator is None:
            raise RuntimeError("RadixCache: SWA eviction asked of a cache without an SWA sub-pool")
        return self.swa_allocator

    def evict_node(self, node: EngineRadixNode, *, force: bool = False) -> None:
        """Free one leaf now. ``force`` evicts it even while locked: a fault, never the engine."""
        node = _own(node)
        if node.children:
            raise ValueError(f"RadixCache.evict_node: node {node.id} has children; evict a leaf")
        if node.lock_ref > 0 and not force:
            raise ValueError(f"RadixCache.evict_node: node {node.id} is locked (lock_ref {node.lock_ref})")
        self._remove_leaf(node)

    def _remove_leaf(self, node: TreeNode) -> TreeNode:
        self._free_slots(node)
        parent = _parent_of(node)
        parent.children.pop(self._child_key(node.key, 0), None)
        return parent

    def _free_slots(self, node: TreeNode) -> None:
        if self.swa_allocator is not None and not node.swa_tombstone:
            self.swa_allocator.free_swa(node.value)
        # Host read of the node's slots: only on eviction, never per token.
        self.full_allocator.free(node.value.tolist())

    @staticmethod
    def _lru_entry(node: TreeNode) -> tuple[int, int, TreeNode]:
        return node.last_access_time, node.id, node

    # -- sizes ----------------------------------------------------------------------------------

    def nodes(self) -> Iterator[TreeNode]:
        """Every node but the root, parents before children."""
        return descendants(self.root_node)

    def total_size(self) -> int:
        return sum(len(node.key) for node in self.nodes())

    def evictable_size(self) -> int:
        return sum(len(node.key) for node in self.nodes() if node.lock_ref == 0)

    def protected_size(self) -> int:
        return sum(len(node.key) for node in self.nodes() if node.lock_ref > 0)

    def swa_evictable_size(self) -> int:
        return sum(len(node.key) for node in self.nodes() if node.lock_ref == 0 and not node.swa_tombstone)

    def swa_resident_size(self) -> int:
        return sum(len(node.key) for node in self.nodes() if not node.swa_tombstone)

    # -- page arithmetic ------------------------------------------------------------------------

    def _align(self, length: int) -> int:
        return length - length % self.page_size

    def _child_key(self, key: Sequence[int], offset: int) -> tuple[int, ...]:
        return tuple(key[offset : offset + self.page_size])

    def _match_len(self, node_key: list[int], key: Sequence[int], offset: int, end: int) -> int:
        limit = min(len(node_key), end - offset)
        matched = 0
        while matched < limit and node_key[matched] == key[offset + matched]:
            matched += 1
        if self.bugs.on("paged-match-aliases-boundary-page"):
            # SGLang#38840: the paged match keeps a length that ends inside a page, so the node is
            # split there and the page on the boundary gets two owners.
            return matched
        return self._align(matched)


def _own(node: EngineRadixNode) -> TreeNode:
    if not isinstance(node, TreeNode):
        raise TypeError(f"RadixCache: {node!r} is not a node of this cache")
    return node


def _parent_of(node: TreeNode) -> TreeNode:
    if node.parent is None:
        raise ValueError(f"RadixCache: node {node.id} has no parent; the root is never split or evicted")
    return node.parent


NodeT = TypeVar("NodeT", bound=EngineRadixNode)


def descendants(root: NodeT) -> Iterator[NodeT]:
    """Every node below ``root``, parents before children."""
    stack = _children(root)
    while stack:
        node = stack.pop()
        yield node
        stack.extend(_children(node))


def _children(node: NodeT) -> list[NodeT]:
    return typing.cast(list[NodeT], list(node.children.values()))  # a tree's children are nodes of its kind
