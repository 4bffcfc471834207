"""What the canary needs from an engine, as types: KV pools, request rows, a forward batch, a radix cache.

kv_canary never imports an engine. SGLang's classes (0.5.23) and the mock engine's have these
shapes; another engine gets the canary by offering them (or by registering its own pool adapter
and ``forward_rows`` extractor). Members read with ``getattr`` because an engine may lack them
are listed in each docstring as *optional*; a Protocol cannot say "may be absent".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

# -- KV pools ------------------------------------------------------------------------------------------


class KvLayerBuffers(Protocol):
    """A (sub-)pool's per-layer buffers, slot-major (``[slots, ...]``) or page-major.

    ``k_buffer`` (DSv4's padded pages: ``kv_buffer``): one tensor per layer; ``v_buffer``: one per
    layer, or None where the pool stores K (a latent) only. Optional: ``size`` and ``page_size``
    (the pool then holds ``size + page_size`` slots, page 0 padding; else the K buffers' rows),
    and ``get_contiguous_buf_infos`` (transfer buffer infos, extended with the canary records).
    """

    @property
    def k_buffer(self) -> Sequence[torch.Tensor]: ...


class HybridSwaKvPool(Protocol):
    """``SWAKVPool``: a full sub-pool and an SWA sub-pool reached through the full-to-SWA map.

    ``full_to_swa_index_mapping[full_slot]`` is the slot's SWA row, 0 when not resident; it must
    be the tensor the SWA allocator maintains. Optional: ``page_size``, ``get_state_buf_infos``.
    """

    @property
    def full_kv_pool(self) -> KvLayerBuffers: ...
    @property
    def swa_kv_pool(self) -> KvLayerBuffers: ...
    @property
    def full_to_swa_index_mapping(self) -> torch.Tensor | None: ...


class DeepSeekV4KvPool(Protocol):
    """``DeepSeekV4TokenToKVPool``: only the SWA sub-pool's K (latent) half is guarded.

    ``swa_kv_pool`` is None in modes that keep sliding-window state per request (unsupported).
    Optional: ``page_size``, ``get_state_buf_infos``.
    """

    @property
    def swa_kv_pool(self) -> KvLayerBuffers | None: ...
    @property
    def full_to_swa_index_mapping(self) -> torch.Tensor | None: ...


# -- request rows and the forward batch ---------------------------------------------------------------


class ReqToTokenRows(Protocol):
    """``req_to_token[row, position]``: int32 full-pool slot of that position of the request in
    ``row`` (row 0: padding). Optional: ``req_token_ids``, int64 of the same shape, the token the
    engine recorded at each position (-1: none); it turns on the ``token`` and ``write_token`` checks.
    """

    @property
    def req_to_token(self) -> torch.Tensor: ...


class ForwardBatchView(Protocol):
    """What the default extractor (``SglangForwardRows``) reads of SGLang's ``ForwardBatch``.

    Optional: ``forward_mode`` (an enum whose ``name`` is DECODE, IDLE, EXTEND or MIXED; without
    it a batch lacking ``extend_prefix_lens`` is a decode), ``extend_prefix_lens`` and
    ``extend_seq_lens`` (int [B], extend forwards), and the host copies ``extend_prefix_lens_cpu``,
    ``extend_seq_lens_cpu``, ``seq_lens_cpu`` that size the plans without a device read.
    """

    @property
    def req_pool_indices(self) -> torch.Tensor:
        """int [B]: each request's row in ``req_to_token``."""
        ...

    @property
    def seq_lens(self) -> torch.Tensor:
        """int [B]: cached + new tokens of each request."""
        ...

    @property
    def out_cache_loc(self) -> torch.Tensor:
        """int [N]: the full-pool slots this forward writes, request after request."""
        ...


# -- the radix (prefix) cache the sweep walks ----------------------------------------------------------


class TokenIdsKey(Protocol):
    """SGLang's ``RadixKey``: ``token_ids``, and a ``len()`` that is its token count (it may cap
    ``token_ids``, or hold one raw token more for EAGLE's bigram keys)."""

    @property
    def token_ids(self) -> Sequence[int]: ...


class RadixNode(Protocol):
    """A radix-tree node, SGLang's shape.

    * ``key``: the node's token ids (a sequence of ints, or a ``TokenIdsKey``);
    * ``value``: an int tensor of the full-pool slots of those tokens, one per token; None when
      the node's K/V is not on the device (SGLang's host-cache eviction), which skips the node
      and everything below it;
    * ``lock_ref``: > 0 while a running request holds the node;
    * ``children``: the child nodes (the mapping's keys are ignored);
    * optional ``swa_tombstone`` (default False): the node's SWA rows were evicted while its
      full-pool slots stay.

    A token's position is its depth from the root; its previous slot is the slot of the token
    before it on the path from the root.
    """

    @property
    def key(self) -> Sequence[int] | TokenIdsKey: ...
    @property
    def value(self) -> torch.Tensor | None: ...
    @property
    def lock_ref(self) -> int: ...
    @property
    def children(self) -> Mapping[Any, RadixNode]: ...


class RadixTree(Protocol):
    """A prefix cache of Python nodes: ``root_node`` (its own key is empty; it is never swept)."""

    @property
    def root_node(self) -> RadixNode: ...


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RadixWalk:
    """Every cached token of a prefix cache, in depth-first order; every tensor is int64 [num_tokens]."""

    slots: torch.Tensor  # full-pool slot
    positions: torch.Tensor  # depth from the root
    prev_slots: torch.Tensor  # full-pool slot of the previous token, PREV_SEQUENCE_START at position 0
    tokens: torch.Tensor  # token id from the radix key (TOKEN_UNKNOWN where the cache keeps none)

    @property
    def num_tokens(self) -> int:
        return int(self.slots.shape[0])


@runtime_checkable
class SelfWalkingCache(Protocol):
    """A prefix cache whose nodes are not Python objects (SGLang's Rust radix tree) walks itself.

    ``unlocked_only`` keeps the tokens of nodes no running request holds; ``swa_resident_only``
    drops tombstoned nodes' tokens. Either filter still walks through a dropped node, so the
    positions and previous slots below it stay exact.
    """

    def radix_walk(self, *, device: torch.device, unlocked_only: bool, swa_resident_only: bool) -> RadixWalk: ...


PrefixCache = RadixTree | SelfWalkingCache
"""What ``CanaryManager.attach_prefix_cache`` takes for the sweep."""
