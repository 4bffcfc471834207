"""The engine's memory on SGLang 0.5.23's real classes (``EngineConfig.mem_backend = "sglang"``).

Real SGLang objects do the work: ``ReqToTokenPool.req_to_token``, ``MHATokenToKVPool`` /
``SWAKVPool`` (K/V buffers and ``set_kv_buffer``), ``TokenToKVPoolAllocator`` /
``SWATokenToKVPoolAllocator`` (free lists and ``full_to_swa_index_mapping``), ``RadixCache``
(mha) and ``UnifiedRadixCache`` with FULL and SWA components (swa; its eviction frees through the
allocator). The thin classes here give them the interfaces the engine's scheduler and KV-cache
manager call, so the rest of the engine does not change. Two things SGLang does not have are
kept here: ``req_token_ids`` (the recorded-token table that turns on the canary's token checks)
and the per-node lock receipts ``UnifiedRadixCache.dec_lock_ref`` asks for.

Supported: modes mha and swa, ``page_size`` 1 (SGLang's paged SWA allocator pages the SWA pool
too, while this engine frees SWA rows per token). SGLang's allocators do not detect double frees,
so ``double_free_count`` stays 0 and ``strict_allocator`` has no effect.
"""

from __future__ import annotations

import collections
import types
import weakref
from array import array
from collections.abc import Iterable, Iterator, Sequence

import torch

from kv_canary.integrations.sglang import SglangTreeCache
from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.allocator import OutOfSlotsError
from mock_models.engine.memory import EngineMemory
from mock_models.engine.radix_cache import InsertResult, MatchResult, descendants
from mock_models.engine.req_to_token_pool import NO_TOKEN
from mock_models.engine.torchvision_stub import install_if_missing
from mock_models.faults.targets import NoTarget
from mock_models.models.spec import LayerKind, ModelSpec

install_if_missing()  # before SGLang's imports: see torchvision_stub.py

from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator  # noqa: E402
from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator  # noqa: E402
from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams, MatchPrefixParams  # noqa: E402
from sglang.srt.mem_cache.cache_init_params import CacheInitParams  # noqa: E402
from sglang.srt.mem_cache.memory_pool import KVWriteLoc, MHATokenToKVPool, ReqToTokenPool  # noqa: E402
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey  # noqa: E402
from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool  # noqa: E402
from sglang.srt.mem_cache.unified_cache.components import ComponentType  # noqa: E402
from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache  # noqa: E402


def build_sglang_memory(config: EngineConfig, spec: ModelSpec) -> EngineMemory:
    """``EngineConfig`` has checked the mode (mha or swa) and the page size (1)."""
    device = str(config.device)
    requests = SglangReqToTokenPool(
        ReqToTokenPool(
            size=config.max_running_requests,
            max_context_len=config.max_context_len,
            device=device,
            enable_memory_saver=False,
        )
    )
    common = dict(
        size=config.max_total_tokens,
        page_size=1,
        dtype=config.torch_kv_dtype,
        head_num=spec.num_heads,
        head_dim=spec.head_dim,
        device=device,
    )
    if config.model_mode is ModelMode.MHA:
        pool = SglangMHAPool(layer_num=spec.num_layers, enable_memory_saver=False, **common)
        allocator = TokenToKVPoolAllocator(
            config.max_total_tokens, config.torch_kv_dtype, device, pool, need_sort=False
        )
        tree = RadixCache(_cache_params(requests, allocator, window=None))
        return EngineMemory(
            req_to_token_pool=requests,
            token_to_kv_pool=pool,
            full_allocator=SglangFullAllocator(allocator, free=allocator.free),
            swa_allocator=None,
            radix_cache=SglangRadixCache(tree, allocator),
        )
    pool = SglangSWAKVPool(
        size_swa=config.swa_pool_size,
        full_attention_layer_ids=spec.layer_ids(LayerKind.FULL),
        swa_attention_layer_ids=spec.layer_ids(LayerKind.WINDOW),
        **common,
    )
    allocator = SWATokenToKVPoolAllocator(
        config.max_total_tokens, config.swa_pool_size, 1, config.torch_kv_dtype, device, pool, need_sort=False
    )
    params = _cache_params(requests, allocator, window=config.swa_window)
    params.tree_components = (ComponentType.FULL, ComponentType.SWA)
    # SGLang's Python tree core (its default is Rust): its nodes are Python objects, which the
    # fault injector picks from and the canary's sweep reads tokens from.
    params.tree_core_backend = "python"
    tree = UnifiedRadixCache(params)
    return EngineMemory(
        req_to_token_pool=requests,
        token_to_kv_pool=pool,
        full_allocator=SglangFullAllocator(allocator.full_attn_allocator, free=allocator.free_full),
        swa_allocator=SglangSwaAllocator(allocator),
        radix_cache=SglangRadixCache(tree, allocator),
    )


def _cache_params(requests: SglangReqToTokenPool, allocator: object, *, window: int | None) -> CacheInitParams:
    return CacheInitParams(
        disable=False,
        req_to_token_pool=requests.sglang_pool,
        token_to_kv_pool_allocator=allocator,
        page_size=1,
        sliding_window_size=window,
    )


def _tensor(values: Iterable[int], device: torch.device | str) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.int64, device=device)


def _layer(layer_id: int) -> types.SimpleNamespace:
    """What SGLang's ``set_kv_buffer`` reads from its ``RadixAttention`` layer argument."""
    return types.SimpleNamespace(layer_id=layer_id)


# -- pools ------------------------------------------------------------------------------------------


class SglangMHAPool(MHATokenToKVPool):
    """SGLang's pool; ``set_kv_buffer`` takes the engine's ``(layer_id, loc, k, v)``."""

    def set_kv_buffer(self, layer_id: int, loc: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor) -> None:
        super().set_kv_buffer(_layer(layer_id), loc, cache_k, cache_v)


class SglangSWAKVPool(SWAKVPool):
    """SGLang's hybrid pool; the engine passes full-pool slots, translated here as SGLang's backends do."""

    def set_kv_buffer(self, layer_id: int, loc: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor) -> None:
        write_loc = KVWriteLoc(loc, swa_loc=self.translate_loc_from_full_to_swa(loc))
        super().set_kv_buffer(_layer(layer_id), write_loc, cache_k, cache_v)


# -- request rows -----------------------------------------------------------------------------------


class SglangReqToTokenPool:
    """SGLang's ``ReqToTokenPool`` rows, plus the recorded-token table SGLang does not keep."""

    def __init__(self, sglang_pool: ReqToTokenPool) -> None:
        self.sglang_pool = sglang_pool
        self.size = sglang_pool.size
        self.max_context_len = sglang_pool.max_context_len
        self.device = torch.device(sglang_pool.device)
        self.req_to_token = sglang_pool.req_to_token
        self.req_token_ids = torch.full(self.req_to_token.shape, NO_TOKEN, dtype=torch.int64, device=self.device)

    def available_size(self) -> int:
        return self.sglang_pool.available_size()

    def alloc(self) -> int:
        rows = self.sglang_pool.alloc_rows(1)
        if rows is None:
            raise RuntimeError(
                f"ReqToTokenPool: all {self.size} request rows are in use; "
                "the scheduler admits at most max_running_requests"
            )
        self.req_token_ids[rows[0]].fill_(NO_TOKEN)
        return rows[0]

    def free(self, row: int) -> None:
        self.sglang_pool.free_rows([row])

    def write_slots(self, rows: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor) -> None:
        self.req_to_token[rows, positions] = slots.to(torch.int32)

    def write_tokens(self, rows: torch.Tensor, positions: torch.Tensor, tokens: torch.Tensor) -> None:
        self.req_token_ids[rows, positions] = tokens.to(torch.int64)


# -- allocators -------------------------------------------------------------------------------------


class SglangFullAllocator:
    """The engine's page allocator interface on an SGLang token allocator (page_size 1: a page is a slot)."""

    page_size = 1
    double_free_count = 0  # SGLang's allocators keep no free flags to tell

    def __init__(self, allocator: object, *, free) -> None:
        self.allocator = allocator
        self.num_pages = self.size = allocator.size
        self._free = free  # SWA: free_full, which expects the slots' SWA rows released first

    def available_pages(self) -> int:
        return self.allocator.available_size()

    def available_size(self) -> int:
        return self.allocator.available_size()

    def alloc_slots(self, num_pages: int) -> list[int]:
        slots = self.allocator.alloc(num_pages) if num_pages else torch.zeros(0, dtype=torch.int64)
        if slots is None:
            raise OutOfSlotsError(f"asked for {num_pages} slots, {self.available_size()} free of {self.size}")
        return slots.tolist()

    def free(self, slots: Iterable[int]) -> None:
        slots = list(slots)
        if slots:
            self._free(_tensor(slots, self.allocator.device))

    def free_slots_unchecked(self, slots: Iterable[int]) -> None:
        """Fault-injection path: hand ``slots`` back to SGLang's allocator while in use."""
        _free_to_front(self.allocator, list(slots))


class SglangSwaAllocator:
    """The engine's SWA allocator interface on ``SWATokenToKVPoolAllocator``, which owns the map."""

    double_free_count = 0

    def __init__(self, allocator: SWATokenToKVPoolAllocator) -> None:
        self.allocator = allocator
        self.size = allocator.size_swa
        self.page_size = 1
        self.device = torch.device(allocator.device)
        self.full_to_swa_index_mapping = allocator.full_to_swa_index_mapping

    def available_size(self) -> int:
        return self.allocator.swa_available_size()

    def alloc_for(self, full_slots: Sequence[int]) -> list[int]:
        if not full_slots:
            return []
        swa_slots = self.allocator.swa_attn_allocator.alloc(len(full_slots))
        if swa_slots is None:
            raise OutOfSlotsError(f"asked for {len(full_slots)} SWA slots, {self.available_size()} free")
        self.allocator.set_full_to_swa_mapping(_tensor(full_slots, self.device), swa_slots)
        return swa_slots.tolist()

    def release(self, full_slots: Sequence[int], swa_slots: Sequence[int]) -> None:
        if not full_slots:
            return
        self.allocator.clear_full_to_swa_mapping(_tensor(full_slots, self.device))
        self.allocator.swa_attn_allocator.free(_tensor(swa_slots, self.device))

    def free_swa(self, full_slots: torch.Tensor) -> None:
        """Free whatever SWA rows the map gives for ``full_slots``; unmapped ones have none."""
        full_slots = full_slots.to(self.device, torch.int64)
        resident = full_slots[self.full_to_swa_index_mapping[full_slots] > 0]
        if resident.numel():
            self.allocator.free_swa(resident)

    def free_slots_unchecked(self, swa_slots: Sequence[int]) -> None:
        """Fault-injection path: hand SWA slots back while in use; their map entries stay."""
        _free_to_front(self.allocator.swa_attn_allocator, list(swa_slots))


def _free_to_front(allocator: TokenToKVPoolAllocator, slots: list[int]) -> None:
    """Put ``slots`` first in the allocator's free list, so the next allocation hands them out.

    SGLang's ``free`` appends to the back, and in a roomy pool a slot freed there is handed out
    again only after every older free slot: a double free would then stay latent for many
    forwards. A busy engine reuses it soon, as the engine's own allocator (lowest index first)
    does; this is what a fault scenario's detection bound assumes.
    """
    if slots:
        allocator.free_pages = torch.cat([_tensor(slots, allocator.device), allocator.free_pages])


# -- radix cache ------------------------------------------------------------------------------------


class SglangRadixCache:
    """The engine's radix-cache interface on SGLang's ``RadixCache`` (mha) or ``UnifiedRadixCache`` (swa).

    Nodes are handed out as ``RadixNodeView``s, the engine's node shape, so the fault injector
    can pick them. ``RadixCache``'s can be force-evicted (through its own one-leaf eviction step,
    private in SGLang), and its sizes are counted by walking the tree, so they stay true after a
    forced eviction. ``UnifiedRadixCache`` (on its Python tree core) hands out ``NodeId``s,
    translated here; it has no step that evicts a locked node. The canary's sweep walks either
    tree through ``radix_walk``.
    """

    def __init__(self, tree: RadixCache | UnifiedRadixCache, allocator: object) -> None:
        self.tree = tree
        self.allocator = allocator
        self.swa_enabled = isinstance(tree, UnifiedRadixCache) and ComponentType.SWA in tree.components
        self._walker = SglangTreeCache(tree)
        self._locks: dict[object, list[object]] = collections.defaultdict(list)
        self._views: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # -- nodes --------------------------------------------------------------------------------------

    def view(self, node: object) -> object:
        """The engine-shaped view of a tree node or ``NodeId`` (the same view each time)."""
        if node is None:
            return None
        if self.swa_enabled and isinstance(node, int):
            node = self.tree.tree_core.node_by_id(node)
        view = self._views.get(node)
        if view is None:
            view = self._views[node] = RadixNodeView(node, self)
        return view

    @property
    def root_node(self) -> object:
        return self.view(self.tree.root_node)

    def nodes(self) -> Iterator[RadixNodeView]:
        """Every node but the root, parents before children."""
        return descendants(self.root_node)

    def radix_walk(self, *, device: torch.device, unlocked_only: bool, swa_resident_only: bool):
        return self._walker.radix_walk(device=device, unlocked_only=unlocked_only, swa_resident_only=swa_resident_only)

    # -- lookup and insertion -----------------------------------------------------------------------

    def match_prefix(self, key: Sequence[int]) -> MatchResult:
        match = self.tree.match_prefix(MatchPrefixParams(key=_key(key)))
        indices = self.tree.path_device_indices(match.last_device_node)[: match.device_prefix_len]
        return MatchResult(device_indices=indices.to(torch.int64), last_node=self.view(match.last_device_node))

    def match_len(self, key: Sequence[int]) -> int:
        """Tokens of ``key`` the tree holds, SWA residency aside (the unified tree's match is window-gated)."""
        if self.swa_enabled:
            return self.tree.tree_core.match_full_device_prefix(_key(key))[0]
        return self.tree.match_prefix(MatchPrefixParams(key=_key(key))).device_prefix_len

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
        return int(differs[0]) if differs.numel() else matched

    # -- locks --------------------------------------------------------------------------------------

    def inc_lock_ref(self, node: object) -> None:
        self._locks[node].append(self.tree.lock(_unwrap(node)))

    def dec_lock_ref(self, node: object) -> None:
        locks = self._locks.get(node)
        if not locks:
            raise RuntimeError(
                f"RadixCache.dec_lock_ref: node {node!r} is not locked here; a request unlocked "
                "a prefix it did not lock"
            )
        self.tree.unlock(locks.pop())

    # -- eviction -----------------------------------------------------------------------------------

    def evict(self, num_tokens: int) -> int:
        return self.tree.evict(EvictParams(num_tokens=num_tokens)).num_tokens_evicted

    def evict_swa(self, num_tokens: int) -> int:
        return self.tree.evict(EvictParams(swa_num_tokens=num_tokens)).swa_num_tokens_evicted

    def evict_node(self, node: RadixNodeView, *, force: bool = False) -> None:
        """Free one leaf now through SGLang's own leaf removal. ``force``: even while locked (a fault)."""
        if node.children:
            raise ValueError(f"RadixCache.evict_node: node {node.id} has children; evict a leaf")
        if node.lock_ref > 0 and not force:
            raise ValueError(f"RadixCache.evict_node: node {node.id} is locked (lock_ref {node.lock_ref})")
        if self.swa_enabled:
            # UnifiedRadixCache's one-leaf step (tree_core.evict_device_leaf) refuses a locked leaf.
            raise NoTarget(
                "mem_backend sglang: SGLang's UnifiedRadixCache cannot force-evict a node; "
                "evict_radix_node in swa needs mem_backend mock"
            )
        if force:  # a fault: its slots are handed out next, as a busy engine would (see _free_to_front)
            _free_to_front(self.allocator, node.value.tolist())
        else:
            self.allocator.free(node.value)
        self.tree._delete_leaf(node.node)  # RadixCache's eviction step, applied to one chosen leaf

    def reset(self) -> None:
        """Flush when idle, as SGLang's scheduler does: an empty tree and every slot free again."""
        if any(self._locks.values()):
            raise RuntimeError("RadixCache.reset: nodes are locked by running requests; flush only when idle")
        self.tree.reset()
        self.allocator.clear()

    # -- sizes --------------------------------------------------------------------------------------

    def evictable_size(self) -> int:
        if self.swa_enabled:
            return self.tree.evictable_size()
        return sum(len(node.key) for node in self.nodes() if node.lock_ref == 0)

    def swa_evictable_size(self) -> int:
        return self.tree.swa_evictable_size()


class RadixNodeView:
    """One SGLang tree node in the engine's node shape: ``key`` a token list, ``value`` and
    ``lock_ref`` of the full pool, ``children`` keyed by the tuple of each child's first tokens,
    ``parent`` None above the root. ``RadixCache``'s ``TreeNode`` has them as attributes;
    ``UnifiedTreeNode`` keeps value and lock per component (an SWA tombstone: no SWA value)."""

    def __init__(self, node: object, cache: SglangRadixCache) -> None:
        self.node = node
        self._cache = cache
        self._unified = hasattr(node, "component_data")

    @property
    def key(self) -> list[int]:
        return [] if self.node.key is None else list(self.node.key.token_ids[: len(self.node.key)])

    @property
    def value(self) -> torch.Tensor:
        return self.node.component_data[ComponentType.FULL].value if self._unified else self.node.value

    @value.setter
    def value(self, value: torch.Tensor) -> None:
        if self._unified:
            self.node.component_data[ComponentType.FULL].value = value
        else:
            self.node.value = value

    @property
    def lock_ref(self) -> int:
        return self.node.component_data[ComponentType.FULL].lock_ref if self._unified else self.node.lock_ref

    @property
    def swa_tombstone(self) -> bool:
        return self._unified and self.node.component_data[ComponentType.SWA].value is None

    @property
    def children(self) -> dict[tuple[int, ...], RadixNodeView]:
        return {tuple(child.key.token_ids[:1]): self._cache.view(child) for child in self.node.children.values()}

    @property
    def parent(self) -> RadixNodeView | None:
        return None if self.node.parent is None else self._cache.view(self.node.parent)

    @property
    def id(self) -> int:
        return self.node.id

    @property
    def last_access_time(self) -> float:
        return self.node.last_access_time


def _unwrap(node: object) -> object:
    """What SGLang's lock calls take: a ``TreeNode``, or a unified tree's ``NodeId``."""
    if not isinstance(node, RadixNodeView):
        return node
    return node.node.id if node._unified else node.node


def _key(tokens: Sequence[int]) -> RadixKey:
    return RadixKey(array("q", tokens))
