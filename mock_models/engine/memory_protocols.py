"""What the engine needs from its memory, as types: request rows, slot allocators, the radix cache.

Two backends implement these (``EngineConfig.mem_backend``): the engine's own classes
(``req_to_token_pool.py``, ``allocator.py``, ``swa_allocator.py``, ``radix_cache.py``) and SGLang
0.5.23's real classes behind thin adapters (``sglang_backend/``). The scheduler, the KV-cache
manager, the engine and the fault injector see only these shapes, so neither backend leaks into
them. The KV pool's shape is the models' (``mock_models.models.forward_inputs``): the model
writes and reads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch

from kv_canary.engine_protocols import RadixNode, RadixTree
from mock_models.models.forward_inputs import KvPool


class EvictionRefusedError(RuntimeError):
    """The radix cache cannot evict a node the way it was asked to; the message says why."""


class RequestRows(Protocol):
    """``req_to_token[row, position]``: the full-pool slot of that position; row 0 is padding.

    ``req_token_ids[row, position]``: the token the engine recorded there (-1: none).
    """

    size: int
    max_context_len: int
    device: torch.device
    req_to_token: torch.Tensor
    req_token_ids: torch.Tensor

    def available_size(self) -> int: ...
    def alloc(self) -> int: ...
    def free(self, row: int) -> None: ...
    def write_slots(self, rows: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor) -> None: ...
    def write_tokens(self, rows: torch.Tensor, positions: torch.Tensor, tokens: torch.Tensor) -> None: ...


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ExtendSpan:
    """One request's part of a forward's allocation, as SGLang's ``alloc_extend`` takes it."""

    prefix_len: int  # positions that already have a slot
    extend_len: int  # new positions this forward writes
    # The slot of position ``prefix_len - 1`` when its page has room left (the new positions
    # continue that page first); -1 when there is nothing to continue (no prefix, or a full page).
    continue_after: int


class FullSlotAllocator(Protocol):
    """Hands out full-pool slots in whole pages; page 0 is padding and never handed out.

    A page belongs to one request: ``alloc_extend`` continues each span's partly filled last page,
    then takes fresh pages.
    """

    page_size: int
    num_pages: int
    size: int

    @property
    def double_free_count(self) -> int: ...

    def available_pages(self) -> int: ...
    def available_size(self) -> int: ...
    def alloc_extend(self, spans: Sequence[ExtendSpan]) -> list[int]:
        """The slots of every span's new positions, span after span."""
        ...

    def free(self, slots: Iterable[int]) -> None: ...
    def free_slots_unchecked(self, slots: Iterable[int]) -> None:
        """Fault-injection path: free the pages of ``slots`` while in use, so that the next
        allocation hands them out."""
        ...


class SwaSlotAllocator(Protocol):
    """The SWA sub-pool's slots and the full-to-SWA index map it owns (0: not resident).

    ``alloc_for`` is called right after the full-pool slots were allocated, with those slots.
    """

    size: int
    page_size: int
    device: torch.device
    full_to_swa_index_mapping: torch.Tensor

    @property
    def double_free_count(self) -> int: ...

    def available_size(self) -> int: ...
    def alloc_for(self, full_slots: Sequence[int]) -> list[int]: ...
    def release(self, full_slots: Sequence[int], swa_slots: Sequence[int]) -> None: ...
    def free_swa(self, full_slots: torch.Tensor) -> None: ...
    def free_slots_unchecked(self, swa_slots: Sequence[int]) -> None:
        """Fault-injection path: free SWA slots while in use; their map entries stay."""
        ...


class EngineRadixNode(RadixNode, Protocol):
    """A radix node as the engine and the fault injector read it: the canary's ``RadixNode``
    (SGLang's shape), with the key a token list, the value always on the device and settable (a
    fault rewrites it), and the parent, id and LRU time. The same node is the same object each
    time it is handed out, so identity comparisons hold.
    """

    @property
    def key(self) -> list[int]: ...
    @property
    def value(self) -> torch.Tensor: ...
    @value.setter
    def value(self, value: torch.Tensor) -> None: ...
    @property
    def lock_ref(self) -> int: ...
    @property
    def swa_tombstone(self) -> bool: ...
    @property
    def children(self) -> Mapping[Any, EngineRadixNode]: ...
    @property
    def parent(self) -> EngineRadixNode | None: ...
    @property
    def id(self) -> int: ...
    @property
    def last_access_time(self) -> float: ...


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class MatchResult:
    device_indices: torch.Tensor  # int64 full-pool slots of the matched prefix
    last_node: EngineRadixNode  # lock this node to keep the prefix

    @property
    def prefix_len(self) -> int:
        return self.device_indices.shape[0]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class InsertResult:
    prefix_len: int  # tokens already in the tree: the caller frees its own slots for them
    last_node: EngineRadixNode  # the node ending at the inserted key


class EnginePrefixCache(RadixTree, Protocol):
    """The radix cache: page-aligned token keys to full-pool slots, lock refs, LRU eviction.

    It is the canary's ``RadixTree`` too: the sweep walks it from ``root_node`` (the SGLang
    backend's cache also walks itself, ``radix_walk``, as SGLang's tree does for the canary).
    """

    @property
    def root_node(self) -> EngineRadixNode: ...

    def nodes(self) -> Iterator[EngineRadixNode]:
        """Every node but the root, parents before children."""
        ...

    def match_prefix(self, key: Sequence[int]) -> MatchResult: ...
    def match_len(self, key: Sequence[int]) -> int:
        """Tokens of ``key`` the tree holds, SWA residency aside; changes nothing."""
        ...

    def insert(self, key: Sequence[int], value: torch.Tensor, *, swa_resident_from: int = 0) -> InsertResult: ...
    def inc_lock_ref(self, node: EngineRadixNode) -> None: ...
    def dec_lock_ref(self, node: EngineRadixNode) -> None: ...
    def evict(self, num_tokens: int) -> int: ...
    def evict_swa(self, num_tokens: int) -> int: ...
    def evict_node(self, node: EngineRadixNode, *, force: bool = False) -> None:
        """Free one leaf now; ``force``: even while locked (a fault). Raises EvictionRefusedError
        where the cache has no way to do it."""
        ...

    def reset(self) -> None: ...
    def evictable_size(self) -> int: ...
    def swa_evictable_size(self) -> int: ...


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class EngineMemory:
    """The five objects the rest of the engine sees, whichever backend built them."""

    req_to_token_pool: RequestRows
    token_to_kv_pool: KvPool
    full_allocator: FullSlotAllocator
    swa_allocator: SwaSlotAllocator | None  # swa and dsv4 modes
    radix_cache: EnginePrefixCache
