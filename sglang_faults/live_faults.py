"""The faults, applied to a live SGLang server's own objects right before a forward runs.

Each takes a ``LiveFaultContext`` and returns what it did, or raises ``NoTarget``. They mirror the
mock engine's (mock_models/faults/, docs/FAULTS.md), on SGLang's ``req_to_token``, allocators,
radix tree, KV pool and the batch about to run:

* ``corrupt_kv_bytes``: the sign bits of the first bytes of the slot's layer-0 K row;
* ``corrupt_canary``: one bit of the slot's HEAD K record;
* ``req_to_token_remap``: a live ``req_to_token`` entry points at another live slot;
* ``double_free``: a slot in use goes to the front of its allocator's free list;
* ``evict_radix_node``: ``deepest_locked`` frees the slots of the deepest locked leaf that a
  request of the batch reads. The node stays in SGLang's tree: ``UnifiedRadixCache`` holds lock
  receipts per node, and removing a locked node would make its lockers' own unlock fail. What the
  canary must catch is the same: slots handed out again while requests still read them.
  ``any_unlocked`` asks SGLang's own eviction for a node's worth of tokens (a control);
* ``remap_swa_slot``: a live ``full_to_swa_index_mapping`` entry points at another SWA slot;
* ``swap_next_token``: a decoding request is fed another token than the one it sampled (the token
  SGLang relays to the forward; its ``output_ids``, which the token snapshot reads, keep the
  sampled one).

``stale_prefix`` is not implemented here.
"""

from __future__ import annotations

from collections.abc import Callable

from kv_canary.launch_tags import KvHalf, Phase, PoolGroupKind
from kv_canary.records import RecordWord
from mock_models.faults.kv_bytes import CORRUPTED_BYTES, flip_sign_bits
from sglang_faults.live_targets import (
    LiveFaultContext,
    NoTarget,
    SlotRef,
    cached_nodes,
    free_to_front,
    full_allocator,
    is_decode,
    node_readers,
    other_live_slot,
    pick_cached_unused_slot,
    pick_live_slot,
    swa_allocator,
    swa_slots_of,
)

LiveApplier = Callable[[LiveFaultContext], str]

_RECORD_WORDS = (RecordWord.TOKEN, RecordWord.POSITION, RecordWord.PREV_HASH)
_LOW_BITS = 8


def _slot(context: LiveFaultContext) -> SlotRef:
    if context.target.slot == "cached_unused":
        return pick_cached_unused_slot(context)
    if context.target.slot == "post_forward" and not is_decode(context.batch):
        raise NoTarget("the batch about to run is not a decode batch, so no slot of the last forward is read now")
    return pick_live_slot(context)[0]  # post_forward: a decode reads the slot the last forward wrote, newest


def corrupt_kv_bytes(context: LiveFaultContext) -> str:
    ref = _slot(context)
    pool = context.server.kv_pool
    if context.target.group == "swa":
        buffer, row, name = pool.swa_kv_pool.k_buffer[0], ref.swa_slot, "SWA"
    else:
        buffer, row, name = getattr(pool, "full_kv_pool", pool).k_buffer[0], ref.full_slot, "full"
    flip_sign_bits(buffer, row)
    return (
        f"flipped the sign bits of the first {CORRUPTED_BYTES} bytes of the {name} pool's layer-0 K row {row}: "
        f"{ref.describe()}"
    )


def corrupt_canary(context: LiveFaultContext) -> str:
    from kv_canary.integrations.sglang.plugin import installed_canary

    canary = installed_canary(context.server.model_runner)
    kind = PoolGroupKind.SWA if context.target.group == "swa" else PoolGroupKind.FULL
    group = canary.manager.group(kind) if canary is not None else None
    if group is None:
        raise NoTarget(f"the canary guards no {kind.value} group in this server")
    ref = _slot(context)
    index = ref.swa_slot if kind is PoolGroupKind.SWA else ref.full_slot
    word = context.rng.choice(_RECORD_WORDS)
    bit = context.rng.randrange(62 if word is RecordWord.PREV_HASH else _LOW_BITS)
    group.records(Phase.HEAD, KvHalf.K)[index, word] ^= 1 << bit
    return (
        f"flipped bit {bit} of the {word.name.lower()} word of the HEAD K record of {kind.value} slot {index}: "
        f"{ref.describe()}"
    )


def req_to_token_remap(context: LiveFaultContext) -> str:
    ref, request = pick_live_slot(context)
    replacement = other_live_slot(context, avoid=ref)
    context.server.req_to_token[request.row, ref.position] = replacement.full_slot
    return f"req_to_token of {ref.describe()} now points at {replacement.describe()}"


def double_free(context: LiveFaultContext) -> str:
    ref = _slot(context)
    if context.target.group == "swa":
        free_to_front(swa_allocator(context.server), [ref.swa_slot])
        freed = f"SWA slot {ref.swa_slot}"
    else:
        free_to_front(full_allocator(context.server), [ref.full_slot])
        freed = f"full slot {ref.full_slot}"
    return f"freed {freed} to the front of its allocator's free list while still in use: {ref.describe()}"


def evict_radix_node(context: LiveFaultContext) -> str:
    server = context.server
    nodes = [node for node in cached_nodes(server.scheduler.tree_cache) if node.is_leaf]
    if context.target.node == "any_unlocked":
        unlocked = [node for node in nodes if node.lock_ref == 0]
        if not unlocked:
            raise NoTarget("the radix cache has no unlocked leaf")
        node = min(unlocked, key=lambda node: (node.last_access_time, node.id))
        from sglang.srt.mem_cache.base_prefix_cache import EvictParams

        evicted = server.scheduler.tree_cache.evict(EvictParams(num_tokens=len(node.slots))).num_tokens_evicted
        return (
            f"asked SGLang's eviction for {len(node.slots)} tokens (LRU leaf {node.describe()}); it evicted "
            f"{evicted}: a control, nothing corrupted"
        )
    window_only = context.target.group == "swa"
    candidates = [
        (node, readers)
        for node in nodes
        if node.lock_ref > 0 and (node.swa_resident or not window_only)
        for readers in [node_readers(context, node)]
        if readers
    ]
    if not candidates:
        raise NoTarget("no locked radix leaf that a request of this batch reads")
    node, readers = max(candidates, key=lambda item: (item[0].depth + len(item[0].slots), item[0].id))
    full_slots = node.slots.tolist()
    free_to_front(full_allocator(server), full_slots)
    swa_slots = [slot for slot in swa_slots_of(server, full_slots) if slot]
    if swa_slots:
        free_to_front(swa_allocator(server), swa_slots)
    holders = ", ".join(reader.describe() for reader in readers)
    return (
        f"freed the {len(full_slots)} full slots{f' and {len(swa_slots)} SWA slots' if swa_slots else ''} of locked "
        f"{node.describe()} (lock_ref {node.lock_ref}, read by {holders}) while they still read them; "
        "the node stays in SGLang's tree"
    )


def remap_swa_slot(context: LiveFaultContext) -> str:
    ref, _request = pick_live_slot(context)
    replacement = other_live_slot(context, avoid=ref)
    if replacement.swa_slot in (0, ref.swa_slot):
        raise NoTarget(f"{replacement.describe()} has no SWA slot of its own to point {ref.describe()} at")
    mapping = context.server.full_to_swa
    if mapping is None:
        raise NoTarget("this server has no SWA pool, so no full_to_swa_index_mapping")
    mapping[ref.full_slot] = replacement.swa_slot
    return (
        f"full_to_swa_index_mapping[{ref.full_slot}] was {ref.swa_slot}, now {replacement.swa_slot}: "
        f"{ref.describe()} reads the SWA slot of {replacement.describe()}"
    )


def swap_next_token(context: LiveFaultContext) -> str:
    batch = context.batch
    if not is_decode(batch):
        raise NoTarget(f"the batch about to run is {batch.forward_mode.name}, not a decode that feeds a sampled token")
    vocab_size = context.server.model_runner.model_config.vocab_size
    index = max(range(len(batch.reqs)), key=lambda i: len(batch.reqs[i].output_ids))
    req, row = batch.reqs[index], int(batch.req_pool_indices[index])
    sampled = int(req.output_ids[-1])
    fed = (sampled + 1 + context.rng.randrange(vocab_size - 1)) % vocab_size
    future_map = getattr(context.server.scheduler, "future_map", None)
    if batch.input_ids is None and future_map is not None:
        # 0.5.23 relays each request's last sampled token through the future map; run_batch
        # gathers this forward's input_ids from it (overlap_utils.resolve_forward_inputs).
        future_map.output_tokens_buf[row] = fed
        where = "the token the future map relays to this forward"
    else:
        input_ids = batch.input_ids.clone()  # may be shared with the last forward's output
        input_ids[index] = fed
        batch.input_ids = input_ids
        where = "the batch's input_ids"
    return (
        f"request {str(req.rid)[:8]} position {req.seqlen - 1}: feeds token {fed} instead of the sampled "
        f"{sampled} ({where}; its output_ids keep the sampled one)"
    )


LIVE_APPLIERS: dict[str, LiveApplier] = {
    "none": lambda _context: "kind none: nothing corrupted (baseline)",
    "corrupt_kv_bytes": corrupt_kv_bytes,
    "corrupt_canary": corrupt_canary,
    "req_to_token_remap": req_to_token_remap,
    "evict_radix_node": evict_radix_node,
    "double_free": double_free,
    "remap_swa_slot": remap_swa_slot,
    "swap_next_token": swap_next_token,
}
