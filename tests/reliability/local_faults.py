"""The contract's fault kinds (``kv_canary_contract``), applied in process between two forwards of a mock ``Engine``.

A test double of the server's injector, for the stateful reliability machines: each fault is
applied right before a forward (where a step hook would run), at the current state, with its
choices drawn from a seeded ``random.Random`` so a Hypothesis case replays exactly. It reports
what it did; whether (and when) the corruption is *read* is judged independently by
``KvShadow``, never derived from what the fault says it did.

``apply_fault`` returns ``None`` when the engine offers no target right now (no running request,
no cached node, ...): the caller tries again before a later forward. Two kinds arm a trap instead
of acting at once (``stale_prefix``: the next prefix match; ``swap_next_token``: the next decode)
and report the forward they fired before through ``PendingFault.step``, as the server's injector
does: a violation that forward reports is a detection with latency 0. ``lost_write`` and
``misdirected_write`` arm the next scheduled forward: one token's K/V write in one layer, through the
server's own ``PoolWriteHook`` (the mechanism; which token, layer and victim is drawn here).
"""

from __future__ import annotations

import dataclasses
import random
import typing
from collections.abc import Callable

import torch

from kv_canary.launch_tags import Phase, PoolGroupKind
from kv_canary.records import RecordWord
from kv_canary_contract import FAULT_KIND_RULES
from mock_models.engine.engine import Engine
from mock_models.engine.memory_protocols import MatchResult
from mock_models.engine.request import Request
from mock_models.engine.scheduler import ScheduledBatch
from mock_models.faults.canary_writes import skip_next_canary_write
from mock_models.faults.kv_writes import PoolWriteHook, group_layers

KV_BYTE_SLOTS = tuple(map(str, FAULT_KIND_RULES["corrupt_kv_bytes"].targets["slot"]))


@dataclasses.dataclass(kw_only=True, slots=True)
class PendingFault:
    kind: str
    target: str  # what was aimed at, in words (a target key of the scenario format where one fits)
    step: int | None = None  # the forward it was applied before (the canary's step): None while armed
    detail: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _Read:
    """A slot some running request's next forward reads."""

    group: PoolGroupKind
    slot: int  # the group's own slot index
    full_slot: int
    req: Request
    position: int


def apply_fault(engine: Engine, kind: str, rng: random.Random, *, target: str | None = None) -> PendingFault | None:
    return _APPLIERS[kind](engine, rng, target)


# -- what the engine holds now ----------------------------------------------------------------------


def _groups(engine: Engine) -> list[PoolGroupKind]:
    return [group.kind for group in engine.canary.groups]


def _swa_map(engine: Engine) -> torch.Tensor:
    """``full_to_swa_index_mapping``; asked only for an SWA group, which only an SWA pool has."""
    assert engine.swa_allocator is not None, "an SWA group without an SWA allocator"
    return engine.swa_allocator.full_to_swa_index_mapping


def _next_reads(engine: Engine) -> list[_Read]:
    """Every (group, slot) the running requests' next forwards verify: FULL prefixes, SWA windows."""
    window = engine.config.swa_window
    reads = []
    for req in engine.scheduler.running:
        if req.kv_len == 0:
            continue
        full_slots = engine.req_to_token_pool.req_to_token[req.req_pool_idx, : req.kv_len].tolist()
        for group in _groups(engine):
            first = 0 if group is PoolGroupKind.FULL else max(0, req.kv_len - window)
            for position in range(first, req.kv_len):
                full_slot = full_slots[position]
                slot = full_slot if group is PoolGroupKind.FULL else int(_swa_map(engine)[full_slot])
                if slot:
                    reads.append(_Read(group=group, slot=slot, full_slot=full_slot, req=req, position=position))
    return reads


def _cached_unused(engine: Engine) -> list[tuple[PoolGroupKind, int]]:
    found: list[tuple[PoolGroupKind, int]] = []
    for node in engine.radix_cache.nodes():
        if node.lock_ref:
            continue
        for full_slot in node.value.tolist():
            for group in _groups(engine):
                if group is PoolGroupKind.FULL:
                    found.append((group, full_slot))
                elif not node.swa_tombstone and int(_swa_map(engine)[full_slot]):
                    found.append((group, int(_swa_map(engine)[full_slot])))
    return found


def _just_written(engine: Engine) -> list[tuple[PoolGroupKind, int]]:
    batch = engine.last_forward_batch
    if batch is None:
        return []
    found: list[tuple[PoolGroupKind, int]] = []
    for full_slot in batch.out_cache_loc.tolist():
        for group in _groups(engine):
            slot = full_slot if group is PoolGroupKind.FULL else int(_swa_map(engine)[full_slot])
            if slot:
                found.append((group, slot))
    return found


# -- the kinds ---------------------------------------------------------------------------------------


def _corrupt_kv_bytes(engine: Engine, rng: random.Random, target: str | None) -> PendingFault | None:
    target = target or rng.choice(KV_BYTE_SLOTS)
    if target == "used":
        candidates = [(read.group, read.slot) for read in _next_reads(engine)]
    elif target == "cached_unused":
        candidates = _cached_unused(engine)
    else:
        candidates = _just_written(engine)
    if not candidates:
        return None
    group_kind, slot = rng.choice(candidates)
    group = engine.canary.group(group_kind)
    half = rng.choice(list(group.halves))
    real_kv = group.halves[half].real_kv
    if real_kv is None:
        return None  # with real_kv none the K/V bytes are unguarded: no target this case
    layer = rng.randrange(len(real_kv.layer_words))
    word = rng.randrange(real_kv.hashed_words)
    bit = rng.randrange(64)
    real_kv.layer_words[layer][slot, word] ^= 1 << bit if bit < 63 else -(1 << 63)
    return PendingFault(
        kind="corrupt_kv_bytes",
        target=target,
        step=engine.forward_count + 1,
        detail=f"{group_kind.value} {half.value} slot {slot} layer {layer} word {word} bit {bit}",
    )


def _corrupt_canary(engine: Engine, rng: random.Random, target: str | None) -> PendingFault | None:
    reads = _next_reads(engine)
    if not reads:
        return None
    read = rng.choice(reads)
    group = engine.canary.group(read.group)
    half = rng.choice(list(group.halves))
    phase = rng.choice([Phase.HEAD, Phase.TAIL])
    words = [RecordWord.TOKEN, RecordWord.POSITION, RecordWord.PREV_HASH]
    if phase is Phase.TAIL and group.halves[half].real_kv is not None:
        words.append(RecordWord.REAL_KV_HASH)
    word = rng.choice(words)
    bit = rng.randrange(63)
    group.records(phase, half)[read.slot, word] ^= 1 << bit
    return PendingFault(
        kind="corrupt_canary",
        target="used",
        step=engine.forward_count + 1,
        detail=f"{phase.value}_{half.value}_{read.group.value} slot {read.slot} {word.name.lower()} bit {bit}",
    )


def _req_to_token_remap(engine: Engine, rng: random.Random, target: str | None) -> PendingFault | None:
    reads = [read for read in _next_reads(engine) if read.req.kv_len >= 2]
    if not reads:
        return None
    read = rng.choice(reads)
    req = read.req
    row = engine.req_to_token_pool.req_to_token[req.req_pool_idx]
    others = [
        position
        for position in range(req.kv_len)
        if position != read.position
        and (PoolGroupKind.FULL in _groups(engine) or int(_swa_map(engine)[int(row[position])]))
    ]
    if not others:
        return None
    other = rng.choice(others)
    row[read.position] = row[other]
    return PendingFault(
        kind="req_to_token_remap",
        target="running",
        step=engine.forward_count + 1,
        detail=f"request {req.rid} position {read.position} -> slot of position {other}",
    )


def _evict_radix_node(engine: Engine, rng: random.Random, target: str | None) -> PendingFault | None:
    locked_leaves = [node for node in engine.radix_cache.nodes() if node.lock_ref > 0 and not node.children]
    if not locked_leaves:
        return None
    deepest = max(_depth(node) for node in locked_leaves)
    node = rng.choice([node for node in locked_leaves if _depth(node) == deepest])
    engine.radix_cache.evict_node(node, force=True)
    return PendingFault(
        kind="evict_radix_node",
        target="deepest_locked",
        step=engine.forward_count + 1,
        detail=f"node {node.id} ({len(node.key)} tokens, lock_ref {node.lock_ref})",
    )


def _double_free(engine: Engine, rng: random.Random, target: str | None) -> PendingFault | None:
    reads = _next_reads(engine)
    if not reads:
        return None
    read = rng.choice(reads)
    if read.group is PoolGroupKind.FULL:
        engine.full_allocator.free_slots_unchecked([read.full_slot])
    else:
        assert engine.swa_allocator is not None, "an SWA group without an SWA allocator"
        engine.swa_allocator.free_slots_unchecked([read.slot])
    return PendingFault(
        kind="double_free",
        target=read.group.value.lower(),
        step=engine.forward_count + 1,
        detail=f"{read.group.value} slot {read.slot} (position {read.position} of {read.req.rid})",
    )


def _remap_swa_slot(engine: Engine, rng: random.Random, target: str | None) -> PendingFault | None:
    reads = [read for read in _next_reads(engine) if read.group is PoolGroupKind.SWA]
    live = sorted(
        {read.slot for read in reads} | {slot for group, slot in _cached_unused(engine) if group is PoolGroupKind.SWA}
    )
    if not reads or len(live) < 2:
        return None
    read = rng.choice(reads)
    other = rng.choice([slot for slot in live if slot != read.slot])
    _swa_map(engine)[read.full_slot] = other
    return PendingFault(
        kind="remap_swa_slot",
        target="in_window",
        step=engine.forward_count + 1,
        detail=f"full slot {read.full_slot} (position {read.position}): SWA {read.slot} -> {other}",
    )


def _stale_prefix(engine: Engine, rng: random.Random, target: str | None) -> PendingFault | None:
    """Arm the radix cache: the next match that another cached sequence could fake returns its slots."""
    cache = engine.radix_cache
    fault = PendingFault(kind="stale_prefix", target="next_match")
    real_match = cache.match_prefix

    def stale_match(key) -> MatchResult:
        match = real_match(key)
        length = match.prefix_len
        if length == 0 or fault.step is not None:
            return match
        impostors = [slots for tokens, slots in _cached_paths(cache, length) if tokens != list(key[:length])]
        if not impostors:
            return match
        fault.step = engine.forward_count + 1
        fault.detail = f"a {length}-token prefix match answered with another sequence's slots"
        cache.match_prefix = real_match
        return MatchResult(device_indices=rng.choice(impostors), last_node=match.last_node)

    cache.match_prefix = stale_match
    return fault


def _swap_next_token(engine: Engine, rng: random.Random, target: str | None) -> PendingFault | None:
    """Arm the engine: before the next decode forward, change what one decoding request is fed."""
    fault = PendingFault(kind="swap_next_token", target="running")
    vocab = engine.config.vocab_size

    def swap(engine: Engine) -> None:
        decoding = [req for req in engine.scheduler.running if not req.needs_prefill]
        if fault.step is not None or not decoding:
            return
        req = rng.choice(decoding)
        fed = req.fill_ids[-1]
        req.fill_ids[-1] = (fed + 1 + rng.randrange(vocab - 1)) % vocab
        fault.step = engine.forward_count + 1
        fault.detail = f"request {req.rid} position {len(req.fill_ids) - 1}: fed {req.fill_ids[-1]}, sampled {fed}"
        remove()

    remove = engine.add_step_hook(swap)
    return fault


def _skip_canary_write(engine: Engine, rng: random.Random, target: str | None) -> PendingFault | None:
    if not _next_reads(engine):
        return None  # no request runs on: the coming forward might not run, or write nothing read again
    skip_next_canary_write(engine.model_runner)
    return PendingFault(
        kind="skip_canary_write",
        target="rank 0",
        step=engine.forward_count + 1,
        detail="the canary records of the coming forward's new slots put back after it",
    )


def _lost_write(engine: Engine, rng: random.Random, target: str | None) -> PendingFault | None:
    return _arm_write_fault(engine, rng, "lost_write")


def _misdirected_write(engine: Engine, rng: random.Random, target: str | None) -> PendingFault | None:
    return _arm_write_fault(engine, rng, "misdirected_write")


def _arm_write_fault(engine: Engine, rng: random.Random, kind: str) -> PendingFault:
    """Arm the engine: the next scheduled forward loses (or misdirects) one token's K/V write in one layer
    of a guarded group; a misdirected one lands in a slot another request of that forward reads."""
    fault = PendingFault(kind=kind, target="running")

    def arm(engine: Engine, batch: ScheduledBatch) -> None:
        if fault.step is not None:
            return
        group = rng.choice(_groups(engine))
        layers = group_layers(engine, "full" if group is PoolGroupKind.FULL else "swa")
        writers = [(start, item.req, item.count) for start, item in zip(_starts(batch), batch.items, strict=True)]
        start, writer, count = rng.choice(writers)
        victims = [read for read in _next_reads(engine) if read.group is group and read.req is not writer]
        if not layers or (kind == "misdirected_write" and not victims):
            return
        index = start + rng.randrange(count)
        victim = rng.choice(victims).full_slot if kind == "misdirected_write" else None
        layer = rng.choice(layers)
        PoolWriteHook(engine, layer_id=layer, token_index=index, redirect_to=victim).install()
        fault.step = engine.forward_count + 1
        fault.detail = f"request {writer.rid} token {index - start} of the forward, layer {layer}, to {victim}"
        remove()

    remove = engine.add_batch_hook(arm)
    return fault


def _starts(batch: ScheduledBatch) -> list[int]:
    starts, start = [], 0
    for item in batch.items:
        starts.append(start)
        start += item.count
    return starts


def _cached_paths(cache, length: int) -> list[tuple[list[int], torch.Tensor]]:
    """(first ``length`` tokens, their slots) of every root path at least that long."""
    paths = []
    stack: list[tuple[typing.Any, list[int], list[torch.Tensor]]] = [
        (child, [], []) for child in cache.root_node.children.values()
    ]
    while stack:
        node, tokens, values = stack.pop()
        tokens, values = tokens + list(node.key), values + [node.value]
        if len(tokens) >= length:
            paths.append((tokens[:length], torch.cat(values)[:length]))
            continue
        stack.extend((child, tokens, values) for child in node.children.values())
    return paths


def _depth(node) -> int:
    depth = 0
    while node.parent is not None:
        depth, node = depth + 1, node.parent
    return depth


_APPLIERS: dict[str, Callable[[Engine, random.Random, str | None], PendingFault | None]] = {
    "corrupt_kv_bytes": _corrupt_kv_bytes,
    "corrupt_canary": _corrupt_canary,
    "req_to_token_remap": _req_to_token_remap,
    "evict_radix_node": _evict_radix_node,
    "double_free": _double_free,
    "remap_swa_slot": _remap_swa_slot,
    "stale_prefix": _stale_prefix,
    "swap_next_token": _swap_next_token,
    "skip_canary_write": _skip_canary_write,
    "lost_write": _lost_write,
    "misdirected_write": _misdirected_write,
}
# Every kind a plain engine (no disaggregation, host tier or speculative decoding) can be given.
assert set(_APPLIERS) == {
    kind for kind, rule in FAULT_KIND_RULES.items() if rule.injects and rule.needs_setting is None
}
