"""Walk a radix (prefix) cache into flat per-token tensors: slot, position, previous slot, token.

The cache is a ``kv_canary.engine_protocols.PrefixCache``: a ``RadixTree`` of ``RadixNode``s
(SGLang's node shape, read by duck typing so that kv_canary never imports an engine), or a
``SelfWalkingCache`` that is asked to walk itself. A token's position is its depth from the
root, and its previous slot is the slot of the token before it on the path from the root
(``PREV_SEQUENCE_START`` = 0 for the first token of the tree). The filters drop a node's own
tokens but still walk through it, so positions and previous slots of the nodes below stay exact.
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from collections.abc import Sequence, Sized

import torch

from kv_canary.engine_protocols import PrefixCache, RadixNode, RadixWalk, SelfWalkingCache, TokenIdsKey
from kv_canary.plans import PREV_SEQUENCE_START


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _NodeSpan:
    start: int  # offset of the node's first token in the concatenation of every node's value
    length: int
    depth: int  # position of the node's first token
    prev_index: int  # offset of the previous token's slot in that concatenation; -1: sequence start


def walk_radix_cache(
    cache: PrefixCache, *, device: torch.device | str, unlocked_only: bool = False, swa_resident_only: bool = False
) -> RadixWalk:
    """Flatten every cached token of ``cache``, optionally only unlocked or only SWA-resident nodes.

    ``unlocked_only`` keeps the nodes no running request holds (``lock_ref == 0``): the cached
    prefixes no forward reads, e.g. for picking a ``cached_unused`` fault target.
    ``swa_resident_only`` drops tombstoned nodes, whose SWA mapping must not be trusted.

    The walk is iterative (deep chains of single-token nodes need no recursion) and reads no
    device value on the host: node values are concatenated and gathered on ``device``.
    """
    device = torch.device(device)
    if isinstance(cache, SelfWalkingCache):
        return cache.radix_walk(device=device, unlocked_only=unlocked_only, swa_resident_only=swa_resident_only)
    values: list[torch.Tensor] = []
    kept: list[_NodeSpan] = []
    keys: list[list[int]] = []
    offset = 0
    # (node, depth of its first token, offset of the previous token's slot)
    pending = [(child, 0, -1) for child in reversed(list(cache.root_node.children.values()))]
    while pending:
        node, depth, prev_index = pending.pop()
        value = node.value
        if value is None:
            continue
        key = _key_tokens(node.key)
        if value.dim() != 1 or value.shape[0] != len(key):
            raise ValueError(
                f"kv_canary radix sweep: a node at depth {depth} has {len(key)} key tokens but a value "
                f"of shape {tuple(value.shape)}; node.value must hold one slot per key token"
            )
        values.append(value)
        if _keeps(node, unlocked_only=unlocked_only, swa_resident_only=swa_resident_only):
            kept.append(_NodeSpan(start=offset, length=len(key), depth=depth, prev_index=prev_index))
            keys.append(key)
        last_index = offset + len(key) - 1 if key else prev_index
        offset += len(key)
        # Reversed so that children come off the stack in their dict order.
        pending.extend((child, depth + len(key), last_index) for child in reversed(list(node.children.values())))
    return _gather(values, kept, keys, device)


def _key_tokens(key: Sequence[int] | TokenIdsKey) -> list[int]:
    """A node key's token ids: one per slot of the node's value."""
    token_ids = getattr(key, "token_ids", None)
    if token_ids is None:
        return list(typing.cast(Sequence[int], key))
    count = len(key) if isinstance(key, Sized) else len(token_ids)
    return [int(token) for token in token_ids[:count]]


def _keeps(node: RadixNode, *, unlocked_only: bool, swa_resident_only: bool) -> bool:
    if unlocked_only and node.lock_ref > 0:
        return False
    return not (swa_resident_only and getattr(node, "swa_tombstone", False))


def _gather(
    values: list[torch.Tensor], kept: list[_NodeSpan], keys: list[list[int]], device: torch.device
) -> RadixWalk:
    """Per-token indices are built on the host from per-node spans, then gathered on ``device``."""

    # Explicitly on the CPU: engines may set a CUDA default device.
    def host(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device="cpu")

    lengths = host([span.length for span in kept])
    total = int(lengths.sum())
    node_of = torch.repeat_interleave(torch.arange(len(kept), device="cpu"), lengths, output_size=total)
    offset_in_node = torch.arange(total, device="cpu") - (torch.cumsum(lengths, 0) - lengths)[node_of]

    def per_token(field: str) -> torch.Tensor:
        return host([getattr(span, field) for span in kept])[node_of]

    value_index = per_token("start") + offset_in_node
    prev_index = torch.where(offset_in_node == 0, per_token("prev_index"), value_index - 1)
    positions = per_token("depth") + offset_in_node
    tokens = host(list(itertools.chain.from_iterable(keys)))

    all_slots = (
        torch.cat([value.to(device=device, dtype=torch.int64) for value in values])
        if values
        else torch.zeros(0, dtype=torch.int64, device=device)
    )
    value_index, prev_index, positions, tokens = (
        _to_device(t, device) for t in (value_index, prev_index, positions, tokens)
    )
    prev_slots = torch.where(prev_index >= 0, all_slots[prev_index.clamp(min=0)], PREV_SEQUENCE_START)
    return RadixWalk(slots=all_slots[value_index], positions=positions, prev_slots=prev_slots, tokens=tokens)


def _to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    # A pageable host-to-device copy waits for the compute stream; a pinned one does not, so the
    # sweep never stalls the engine. The caching host allocator keeps the pinned buffer alive
    # until the copy has run.
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)
