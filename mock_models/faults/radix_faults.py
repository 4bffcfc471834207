"""Faults in the radix (prefix) cache: ``evict_radix_node`` and ``stale_prefix``.

* ``evict_radix_node``, ``node: deepest_locked``: force-evict the deepest leaf locked by a request
  the coming forward runs. Its full slots (and SWA slots) go back to the free lists while the
  requests locking it still read them through their ``req_to_token`` rows; the next allocations
  hand them out and overwrite them. Where only the SWA group can see it (``group: swa``, and any
  group in dsv4) the node must be SWA-resident and inside the window of such a request
  (elsewhere nothing reads it), and the leaf with the largest share of its tokens in that window
  is taken before the deepest.
  ``node: any_unlocked`` evicts the least recently used unlocked leaf exactly as LRU eviction
  would: a control, nothing is corrupted.
* ``stale_prefix``: the last slots of an unlocked node are replaced by the slots of another
  cached sequence (another node, else a running request's newest slots), so a prefix match
  returns slots holding other tokens at other positions, as a stale entry whose slots were
  reused would. The node preferred is the deepest unlocked one on the match path of a waiting
  request (its admission reads the stale slots); else the most recently used unlocked node,
  which only the sweep or a later match reads. In modes with an SWA pool both nodes must be
  SWA-resident, so the SWA group reads the stale slots too.
"""

from __future__ import annotations

import torch

from mock_models.engine.engine import Engine
from mock_models.engine.memory_protocols import EngineRadixNode, EvictionRefusedError
from mock_models.engine.request import Request
from mock_models.faults.targets import (
    FaultContext,
    NoTarget,
    lockers,
    match_path,
    node_depth,
    seen_in_window_only,
    swa_resident,
)


def evict_radix_node(context: FaultContext) -> str:
    engine, target = context.engine, context.target
    leaves = [node for node in engine.radix_cache.nodes() if not node.children and node.key]
    if target.node == "any_unlocked":
        unlocked = [node for node in leaves if node.lock_ref == 0]
        if not unlocked:
            raise NoTarget("the radix cache has no unlocked leaf")
        node = min(unlocked, key=lambda node: (node.last_access_time, node.id))
        span = _span(node)
        engine.radix_cache.evict_node(node)
        return f"evicted unlocked radix node {node.id} ({span}) as LRU eviction would: a control, nothing corrupted"
    locked = [node for node in leaves if node.lock_ref > 0 and lockers(context, node)]
    window_only = seen_in_window_only(engine, target)
    if window_only:
        locked = [node for node in locked if swa_resident(engine, node) and _tokens_in_a_lockers_window(context, node)]
    if not locked:
        where = ", SWA-resident and in its window" if window_only else ""
        raise NoTarget(f"no radix leaf locked by a request the coming forward runs{where}")

    # Deepest first. Where only the window sees it: the largest share of the node in the window
    # first. Freed slots are handed out again lowest first, a few per forward, so the node's oldest
    # positions are overwritten first, and they must still be in the window then.
    def window_share(node: EngineRadixNode) -> float:
        return _tokens_in_a_lockers_window(context, node) / len(node.key) if window_only else 0.0

    node = max(locked, key=lambda node: (window_share(node), node_depth(node) + len(node.key), node.id))
    holders = ", ".join(req.rid[:8] for req in lockers(context, node))
    span, lock_ref = _span(node), node.lock_ref
    try:
        engine.radix_cache.evict_node(node, force=True)
    except EvictionRefusedError as refused:
        raise NoTarget(str(refused)) from None
    return (
        f"force-evicted radix node {node.id} ({span}, lock_ref {lock_ref}, locked by requests {holders}): "
        "its slots are free while they still read them"
    )


def stale_prefix(context: FaultContext) -> str:
    engine = context.engine
    stale, matched, reader = _node_to_make_stale(engine)
    donor_slots, donor = _donor_slots(engine, stale, matched)
    k = donor_slots.shape[0]
    value = stale.value.clone()
    value[matched - k : matched] = donor_slots.to(value.device)
    stale.value = value
    start = node_depth(stale) + matched - k
    read = (
        f"the waiting request {reader.rid[:8]} matches it"
        if reader is not None
        else "no waiting request matches it yet; a later match or the sweep reads it"
    )
    return f"radix node {stale.id}: positions [{start}, {start + k}) now map to the slots of {donor} ({read})"


def _span(node: EngineRadixNode) -> str:
    depth = node_depth(node)
    return f"positions [{depth}, {depth + len(node.key)})"


def _tokens_in_a_lockers_window(context: FaultContext, node: EngineRadixNode) -> int:
    """The most of the node's tokens inside the window of one request of the coming forward locking it."""
    start, end, window = node_depth(node), node_depth(node) + len(node.key), context.engine.config.swa_window
    return max(
        (max(0, min(end, req.kv_len) - max(start, req.kv_len - window)) for req in lockers(context, node)), default=0
    )


def _node_to_make_stale(engine: Engine) -> tuple[EngineRadixNode, int, Request | None]:
    """(node, how many of its tokens to consider, the waiting request that will match it or None)."""

    def usable(node: EngineRadixNode) -> bool:
        return node.lock_ref == 0 and swa_resident(engine, node)

    for req in engine.scheduler.waiting:
        path = [(node, matched) for node, matched in match_path(engine, req.origin_input_ids[:-1]) if usable(node)]
        if path:
            node, matched = path[-1]
            return node, matched, req
    candidates = [node for node in engine.radix_cache.nodes() if node.key and usable(node)]
    if not candidates:
        raise NoTarget(
            "the radix cache holds no unlocked node"
            + (" that is SWA-resident" if engine.swa_allocator is not None else "")
        )
    node = max(candidates, key=lambda node: (node.last_access_time, node.id))
    return node, len(node.key), None


def _donor_slots(engine: Engine, stale: EngineRadixNode, matched: int) -> tuple[torch.Tensor, str]:
    """Slots of another sequence for the last positions of ``stale``'s matched tokens."""
    tokens = stale.key[:matched]
    donors = [
        node for node in engine.radix_cache.nodes() if node is not stale and node.key and swa_resident(engine, node)
    ]
    for node in sorted(donors, key=lambda node: (-len(node.key), node.id)):
        k = min(matched, len(node.key))
        if node.key[-k:] != tokens[-k:]:
            return node.value[-k:], f"radix node {node.id}"
    for req in sorted(engine.scheduler.running, key=lambda req: -req.kv_len):
        k = min(matched, req.kv_len)
        if k and req.token_ids[req.kv_len - k : req.kv_len] != tokens[-k:]:
            slots = engine.req_to_token_pool.req_to_token[req.req_pool_idx, req.kv_len - k : req.kv_len]
            return slots.to(torch.int64), f"request {req.rid[:8]}'s newest {k} positions"
    raise NoTarget(f"no other cached sequence to take slots from for radix node {stale.id}")
