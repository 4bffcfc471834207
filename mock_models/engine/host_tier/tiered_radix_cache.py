"""The radix cache with a host tier (``EngineConfig.host_tier_tokens``), as SGLang's HiCache does it.

Evicting a device leaf writes it back to host memory first (its K/V and canary records, and its
SWA rows when it has them): the node leaves the device tree and hangs, as a ``HostNode``, off the
device node that was its parent, with any host nodes below it. A prefix match that reaches a host
node loads it back: fresh device pages (and SWA slots, when it was offloaded with SWA rows;
otherwise it comes back as an SWA tombstone), the bytes copied in, the node back in the device
tree. Host nodes are never in ``children``, so whatever walks the device tree (the canary's sweep,
sizes, eviction, the fault injector) sees device-resident nodes only. When the host is full, its
least recently used host leaves are dropped. Under SWA pressure it writes unlocked leaves back
before it tombstones anything, so that offloaded nodes keep their SWA rows.

For the fault injector: ``arm_wrong_slots`` makes the next load-back copy every page and SWA row
into its neighbour's slots (with ``swa_rows_only``, the next one that brings SWA rows back: in
DSv4 only they are guarded); ``restores`` remembers the latest load-backs with the SWA slots their
tokens had before the offload; ``host_nodes`` lists what is on the host.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
from collections.abc import Iterator, Sequence

import torch

from mock_models.engine.allocator import PagedTokenAllocator
from mock_models.engine.bugs import NO_BUGS, EngineBugs
from mock_models.engine.host_tier.host_pool import HostCopy, HostKvPool
from mock_models.engine.kv_copy import BufferSet
from mock_models.engine.memory_protocols import MatchResult
from mock_models.engine.radix_cache import RadixCache, TreeNode
from mock_models.engine.swa_allocator import SWATokenAllocator

_RESTORES_KEPT = 64
_host_node_ids = itertools.count()


@dataclasses.dataclass(eq=False, kw_only=True, slots=True)
class HostNode:
    key: list[int]
    copy: HostCopy
    children: dict[tuple[int, ...], HostNode]
    last_access_time: int
    id: int = dataclasses.field(default_factory=lambda: next(_host_node_ids))


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Restore:
    """A load-back: the node, its new slots, and the SWA slots its tokens had before the offload."""

    node: TreeNode
    full_slots: list[int]
    swa_slots: list[int] | None  # None: restored as an SWA tombstone
    swa_slots_at_offload: list[int]


class HostTieredRadixCache(RadixCache):
    def __init__(
        self,
        *,
        pool: object,
        host_tokens: int,
        page_size: int,
        device: torch.device | str,
        full_allocator: PagedTokenAllocator,
        swa_allocator: SWATokenAllocator | None = None,
        swa_window: int | None = None,
        bugs: EngineBugs = NO_BUGS,
    ) -> None:
        super().__init__(
            page_size=page_size,
            device=device,
            full_allocator=full_allocator,
            swa_allocator=swa_allocator,
            swa_window=swa_window,
            bugs=bugs,
        )
        self._pool = pool
        self._host_tokens = host_tokens
        self._host: HostKvPool | None = None  # built at first use: the canary adds its buffers at install
        self._offloaded: dict[TreeNode, dict[tuple[int, ...], HostNode]] = {}
        self.restores: collections.deque[Restore] = collections.deque(maxlen=_RESTORES_KEPT)
        self.offloads = self.load_backs = 0
        self._wrong_slots_armed: bool | None = None  # armed: whether it waits for a load-back with SWA rows

    # -- the fault injector's handles ---------------------------------------------------------------

    def arm_wrong_slots(self, *, swa_rows_only: bool) -> None:
        self._wrong_slots_armed = swa_rows_only

    def host_nodes(self) -> Iterator[HostNode]:
        stack = [host for children in self._offloaded.values() for host in children.values()]
        while stack:
            host = stack.pop()
            yield host
            stack.extend(host.children.values())

    def host_child_at(self, key: Sequence[int]) -> HostNode | None:
        """The host node a prefix match of ``key`` would load back first; changes nothing."""
        path, offset = self._walk(key, split=False)
        if sum(len(node.key) for node in path) != offset:
            return None  # the match ends inside a device node
        parent = path[-1] if path else self.root_node
        return self._offloaded.get(parent, {}).get(self._child_key(key, offset))

    def host_path(self, key: Sequence[int]) -> list[HostNode]:
        """The host nodes a prefix match of ``key`` would load back, in order; changes nothing."""
        path: list[HostNode] = []
        host = self.host_child_at(key)
        offset = self._walk(key, split=False)[1]
        end = self._align(len(key))
        while host is not None and self._match_len(host.key, key, offset, end):
            path.append(host)
            offset += len(host.key)
            if offset > end:
                break
            host = host.children.get(self._child_key(key, offset))
        return path

    @property
    def host(self) -> HostKvPool:
        if self._host is None:
            state = getattr(self._pool, "get_state_buf_infos", None)
            self._host = HostKvPool(
                full=BufferSet.of(self._pool.get_contiguous_buf_infos()),  # type: ignore[attr-defined]
                state=None if state is None else BufferSet.of(state()),
                tokens=self._host_tokens,
                page_size=self.page_size,
            )
        return self._host

    # -- offload ----------------------------------------------------------------------------------------

    def _remove_leaf(self, node: TreeNode) -> TreeNode:
        self._offload(node)
        return super()._remove_leaf(node)

    def _offload(self, node: TreeNode) -> None:
        """Write a device leaf back to the host, where it hangs off its parent with its host children."""
        children = self._offloaded.pop(node, {})
        copy = self._backup(node)
        if copy is None:
            for host in children.values():
                self._drop(host)
            return
        parent = node.parent
        assert parent is not None  # the root is never evicted
        host = HostNode(key=list(node.key), copy=copy, children=children, last_access_time=node.last_access_time)
        self._offloaded.setdefault(parent, {})[self._child_key(node.key, 0)] = host
        self.offloads += 1

    def evict_swa(self, num_tokens: int) -> int:
        """SWA pressure writes whole unlocked leaves back first (their SWA rows go to the host with
        them), and only then tombstones: a node tombstoned on the device would reach the host without
        its SWA rows, and come back unable to end a match."""
        leaves = [self._lru_entry(node) for node in self.nodes() if self._offloadable_with_swa(node)]
        heapq.heapify(leaves)
        freed = 0
        while freed < num_tokens and leaves:
            node = heapq.heappop(leaves)[-1]
            freed += len(node.key)
            parent = self._remove_leaf(node)
            if parent is not self.root_node and self._offloadable_with_swa(parent):
                heapq.heappush(leaves, self._lru_entry(parent))
        return freed + (super().evict_swa(num_tokens - freed) if freed < num_tokens else 0)

    @staticmethod
    def _offloadable_with_swa(node: TreeNode) -> bool:
        return not node.children and node.lock_ref == 0 and not node.swa_tombstone

    def _backup(self, node: TreeNode) -> HostCopy | None:
        slots = node.value.tolist()  # host read of the node's slots: only on eviction
        pages = [slot // self.page_size for slot in slots[:: self.page_size]]
        swa = self.swa_allocator
        resident = swa is not None and not node.swa_tombstone
        swa_slots = (
            swa.full_to_swa_index_mapping[node.value].tolist() if swa is not None and resident else [0] * len(slots)
        )
        while not self.host.fits(pages=len(pages), swa_slots=len(slots) if resident else 0):
            if not self._drop_host_lru_leaf():
                return None
        return self.host.backup(device_pages=pages, device_swa_slots=swa_slots, resident=resident)

    def _drop_host_lru_leaf(self) -> bool:
        leaves = [
            (host.last_access_time, host.id, children, key)
            for children in self._all_host_containers()
            for key, host in children.items()
            if not host.children
        ]
        if not leaves:
            return False
        _, _, children, key = min(leaves, key=lambda leaf: leaf[:2])
        self._drop(children.pop(key))
        return True

    def _all_host_containers(self) -> Iterator[dict[tuple[int, ...], HostNode]]:
        stack = list(self._offloaded.values())
        while stack:
            children = stack.pop()
            yield children
            stack.extend(host.children for host in children.values())

    def _drop(self, host: HostNode) -> None:
        for child in host.children.values():
            self._drop(child)
        self.host.release(host.copy)

    # -- load-back --------------------------------------------------------------------------------------

    def match_prefix(self, key: Sequence[int]) -> MatchResult:
        path, offset = self._walk(key, split=True)
        end = self._align(len(key))
        parent = path[-1] if path else self.root_node
        while offset < end:
            host = self._offloaded.get(parent, {}).get(self._child_key(key, offset))
            if host is None:
                break
            matched = self._match_len(host.key, key, offset, end)
            if matched == 0:
                break
            loaded = self._load_back(parent, self._split_host(parent, host, matched))
            if loaded is None:
                break
            path.append(loaded)
            parent, offset = loaded, offset + matched
        return self._match_result(path)

    def _split_host(self, parent: TreeNode, host: HostNode, tokens: int) -> HostNode:
        """The host node of ``host``'s first ``tokens``, the rest hanging below it."""
        if tokens == len(host.key):
            return host
        head_copy, tail_copy = host.copy.split(tokens=tokens, page_size=self.page_size)
        tail = HostNode(
            key=host.key[tokens:], copy=tail_copy, children=host.children, last_access_time=host.last_access_time
        )
        head = HostNode(
            key=host.key[:tokens],
            copy=head_copy,
            children={self._child_key(tail.key, 0): tail},
            last_access_time=host.last_access_time,
        )
        self._offloaded[parent][self._child_key(head.key, 0)] = head
        return head

    def _load_back(self, parent: TreeNode, host: HostNode) -> TreeNode | None:
        """Bring ``host`` back under ``parent``; None (and ``host`` left on the host) without device room."""
        siblings = self._offloaded[parent]
        del siblings[self._child_key(host.key, 0)]  # out of reach of the evictions that make room
        num_pages = len(host.key) // self.page_size
        self.inc_lock_ref(parent)  # the matched path must survive those evictions
        try:
            short = num_pages - self.full_allocator.available_pages()
            if short > 0:
                self.evict(short * self.page_size)
            if self.full_allocator.available_pages() < num_pages:
                siblings[self._child_key(host.key, 0)] = host
                return None
            full_slots = self.full_allocator.alloc_slots(num_pages)
            swa_slots = self._swa_rows_for(host, full_slots)
        finally:
            self.dec_lock_ref(parent)
        pages = [slot // self.page_size for slot in full_slots[:: self.page_size]]
        rotates_swa = swa_slots is not None and len(swa_slots) > 1
        if self._wrong_slots_armed is not None and (rotates_swa or (not self._wrong_slots_armed and len(pages) > 1)):
            self._wrong_slots_armed = None
            self.host.restore(
                host.copy,
                device_pages=_rotated(pages),
                device_swa_slots=None if swa_slots is None else _rotated(swa_slots),
            )
        else:
            self.host.restore(host.copy, device_pages=pages, device_swa_slots=swa_slots)
        node = self._add_child(
            parent,
            host.key,
            torch.tensor(full_slots, dtype=torch.int64),
            next(self._clock),
            tombstone=swa_slots is None and self.swa_enabled,
        )
        if host.children:
            self._offloaded[node] = host.children
        self.host.release(host.copy)
        self.restores.append(
            Restore(
                node=node,
                full_slots=full_slots,
                swa_slots=swa_slots,
                swa_slots_at_offload=host.copy.swa_slots_at_offload,
            )
        )
        self.load_backs += 1
        return node

    def _swa_rows_for(self, host: HostNode, full_slots: list[int]) -> list[int] | None:
        """Fresh SWA slots for a node offloaded with its SWA rows, if the SWA pool has room; else None."""
        if self.swa_allocator is None or host.copy.swa_slots is None:
            return None
        short = len(full_slots) - self.swa_allocator.available_size()
        if short > 0:
            self.evict_swa(short)
        if self.swa_allocator.available_size() < len(full_slots):
            return None
        return self.swa_allocator.alloc_for(full_slots)

    # -- the rest of the tree's life --------------------------------------------------------------------

    def _add_child(
        self, parent: TreeNode, key: list[int], value: torch.Tensor, tick: int, *, tombstone: bool
    ) -> TreeNode:
        stale = self._offloaded.get(parent, {}).pop(self._child_key(key, 0), None)
        if stale is not None:  # the device now holds these tokens again: the host copy is superseded
            self._drop(stale)
        return super()._add_child(parent, key, value, tick, tombstone=tombstone)

    def reset(self) -> None:
        super().reset()
        for children in self._offloaded.values():
            for host in children.values():
                self._drop(host)
        self._offloaded.clear()
        self.restores.clear()


def _rotated(values: list[int]) -> list[int]:
    return values[-1:] + values[:-1]
