"""Finding what a fault lands on: live slots of the requests the coming forward runs, cached slots
no request holds, the slots the last forward wrote, radix nodes.

A fault that corrupts what a request reads is applied once the coming forward is scheduled
(``FaultContext.batch``: its requests are known, no slot is allocated yet), and only the requests
of that batch are targets: an EXTEND forward runs only the prompts it prefills, so a decoding
request picked then would not read the corruption until every chunk of the prefill had run.

A *live* slot is one the canary of the target group verifies at the request's next forward:
the FULL group reads a request's whole prefix ``[0, kv_len)``, the SWA group the window
``[kv_len - swa_window, kv_len)`` through ``full_to_swa_index_mapping``. In dsv4 only the SWA group
is guarded, so a fault on a full-pool slot (``group: full``) picks in-window positions there too:
anything else could not be seen by design. ``position: in_window`` / ``out_of_window`` narrow
the positions further (in mha every position a request reads is "in the window").

The batch's requests are tried by the most tokens left to generate, so the corrupted state is
read for long; within a request the newest position is taken: it stays in the window longest.

Selection reads device tensors on the host (``tolist``, ``item``): fault injection runs between
forwards and is not a hot path.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from kv_canary_contract import ResolvedTarget
from mock_models.config import ModelMode
from mock_models.engine.engine import Engine
from mock_models.engine.memory_protocols import EngineRadixNode, SwaSlotAllocator
from mock_models.engine.model_runner import ModelRunner
from mock_models.engine.request import Request
from mock_models.engine.scheduler import ScheduledBatch


class NoTarget(Exception):
    """Nothing in the engine's current state fits the target; the message says what was looked for."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class FaultContext:
    engine: Engine
    target: ResolvedTarget
    rng: random.Random  # target choices that vary per application (bits, words), seeded per fault
    step: int  # the forward the fault precedes
    batch: ScheduledBatch | None  # that forward, once scheduled; None for kinds applied before scheduling


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SlotRef:
    """A full-pool slot at a position of a sequence, and its SWA slot (0: none)."""

    full_slot: int
    swa_slot: int
    position: int
    request: Request | None = None  # the running request reading it
    node: EngineRadixNode | None = None  # the radix node holding it, for cached slots

    @property
    def reader(self) -> Request:
        """The running request reading a live slot (``pick_live_slot`` and friends always set it)."""
        if self.request is None:
            raise NoTarget(f"{self.describe()} is read by no running request")
        return self.request

    def describe(self) -> str:
        owner = (
            f"request {self.request.rid[:8]}"
            if self.request is not None
            else f"radix node {getattr(self.node, 'id', None)}"
        )
        swa = f", SWA slot {self.swa_slot}" if self.swa_slot else ""
        return f"full slot {self.full_slot}{swa} ({owner}, position {self.position})"


def swa_allocator(engine: Engine) -> SwaSlotAllocator:
    """The engine's SWA allocator, for a target in group swa (the contract refuses those without an SWA pool)."""
    if engine.swa_allocator is None:
        raise NoTarget(f"mode {engine.config.model_mode.value} has no SWA pool")
    return engine.swa_allocator


def on_target_rank(context: FaultContext, corrupt: Callable[[ModelRunner], None]) -> str:
    """Run ``corrupt`` on the rank the target names (a module-level function, or a partial of one:
    it crosses to that rank's process by name); returns how a detail names the rank ('' for one rank)."""
    rank = context.target.rank or 0
    context.engine.on_ranks(corrupt, (rank,))
    return f" on rank {rank}" if context.engine.config.ranks > 1 else ""


# -- requests ---------------------------------------------------------------------------------------


def next_forward_requests(context: FaultContext) -> list[Request]:
    """The requests the coming forward runs, those with the most tokens left to generate first."""
    if context.batch is None:
        raise RuntimeError(f"fault kind applied before scheduling asked for the requests of forward {context.step}")
    return sorted((item.req for item in context.batch.items), key=lambda req: len(req.output_ids) - req.max_new_tokens)


def window_start(engine: Engine, req: Request) -> int:
    if not engine.config.has_swa_pool:
        return 0
    return max(0, req.kv_len - engine.config.swa_window)


def swa_slots_of(engine: Engine, full_slots: list[int]) -> list[int]:
    if engine.swa_allocator is None or not full_slots:
        return [0] * len(full_slots)
    mapping = engine.swa_allocator.full_to_swa_index_mapping
    return mapping[full_slots].tolist()


def seen_in_window_only(engine: Engine, target: ResolvedTarget) -> bool:
    """Whether the canary sees the target only through the SWA group's window (group swa, or dsv4)."""
    return target.group == "swa" or engine.config.model_mode is ModelMode.DSV4


def live_slots(engine: Engine, req: Request, target: ResolvedTarget) -> list[SlotRef]:
    """The request's positions the target group's canary reads next, narrowed by ``target.position``."""
    first = window_start(engine, req)
    in_window_only = seen_in_window_only(engine, target)
    lo, hi = (first if in_window_only else 0), req.kv_len
    if target.position == "in_window":
        lo = max(lo, first)
    elif target.position == "out_of_window":
        lo, hi = 0, first
    if hi <= lo:
        return []
    full_slots = engine.req_to_token_pool.req_to_token[req.req_pool_idx, lo:hi].tolist()
    swa_slots = swa_slots_of(engine, full_slots)
    needs_swa_slot = in_window_only and target.position != "out_of_window"
    return [
        SlotRef(full_slot=full, swa_slot=swa, position=lo + offset, request=req)
        for offset, (full, swa) in enumerate(zip(full_slots, swa_slots, strict=True))
        if swa or not needs_swa_slot
    ]


def pick_live_slot(context: FaultContext) -> SlotRef:
    """The newest live slot of the first request of the coming forward that has one."""
    for req in next_forward_requests(context):
        slots = live_slots(context.engine, req, context.target)
        if slots:
            return slots[-1]
    raise NoTarget(f"no request the coming forward runs reads a position {context.target.where()} yet")


def other_live_slot(context: FaultContext, avoid: SlotRef) -> SlotRef:
    """A live slot at another position than ``avoid``, preferably of another request.

    Any running request's slot will do: it is what ``avoid`` is pointed at, not what must be read.
    """
    coming = next_forward_requests(context)
    requests = coming + [req for req in context.engine.scheduler.running if req not in coming]
    requests.sort(key=lambda req: req is avoid.request)  # stable: other requests first
    any_position = dataclasses.replace(context.target, position=None)
    for req in requests:
        for ref in reversed(live_slots(context.engine, req, any_position)):
            if ref.position != avoid.position and ref.full_slot != avoid.full_slot:
                return ref
    raise NoTarget(f"no second live slot {any_position.where()} to point {avoid.describe()} at")


# -- the last forward ---------------------------------------------------------------------------------


def pick_post_forward_slot(context: FaultContext) -> SlotRef:
    """A slot the previous forward wrote for a request the coming forward runs (and so reads it)."""
    engine, target = context.engine, context.target
    batch = engine.last_forward_batch
    if batch is None:
        raise NoTarget("no forward has run yet")
    coming = next_forward_requests(context)
    order = {req.req_pool_idx: index for index, req in enumerate(coming)}
    written = batch.out_cache_loc.tolist()
    by_request: list[tuple[Request, list[int], int]] = []
    for row, start, n, prefix in zip(
        batch.req_pool_indices_cpu,
        batch.extend_start_loc_cpu,
        batch.extend_seq_lens_cpu,
        batch.extend_prefix_lens_cpu,
        strict=True,
    ):
        if row in order:
            by_request.append((coming[order[row]], written[start : start + n], prefix))
    for req, slots, prefix in sorted(by_request, key=lambda item: order[item[0].req_pool_idx]):
        swa_slots = swa_slots_of(engine, slots)
        for offset in reversed(range(len(slots))):
            if target.group != "swa" or swa_slots[offset]:
                return SlotRef(
                    full_slot=slots[offset], swa_slot=swa_slots[offset], position=prefix + offset, request=req
                )
    raise NoTarget(
        f"forward {engine.forward_count} wrote no slot {target.where()} of a request the coming forward runs"
    )


# -- the radix cache ----------------------------------------------------------------------------------


def node_depth(node: EngineRadixNode) -> int:
    """Position of the node's first token: the tokens of its ancestors."""
    depth, parent = 0, node.parent
    while parent is not None:
        depth += len(parent.key)
        parent = parent.parent
    return depth


def swa_resident(engine: Engine, node: EngineRadixNode) -> bool:
    return engine.swa_allocator is None or not node.swa_tombstone


def pick_cached_unused_slot(engine: Engine, target: ResolvedTarget) -> SlotRef:
    """The last slot of the most recently used radix node no running request holds."""
    needs_swa = target.group == "swa"
    nodes = [
        node
        for node in engine.radix_cache.nodes()
        if node.lock_ref == 0 and node.key and (not needs_swa or swa_resident(engine, node))
    ]
    if not nodes:
        what = "SWA-resident " if needs_swa else ""
        raise NoTarget(f"the radix cache holds no {what}node that no running request locks")
    node = max(nodes, key=lambda node: (node.last_access_time, node.id))
    full_slot = int(node.value[-1])
    return SlotRef(
        full_slot=full_slot,
        swa_slot=swa_slots_of(engine, [full_slot])[0],
        position=node_depth(node) + len(node.key) - 1,
        node=node,
    )


def lockers(context: FaultContext, node: EngineRadixNode) -> list[Request]:
    """Requests of the coming forward whose locked path ends at ``node`` or below it."""
    found = []
    for req in next_forward_requests(context):
        walk = req.last_node
        while walk is not None and walk is not node:
            walk = walk.parent
        if walk is node:
            found.append(req)
    return found


def match_path(engine: Engine, tokens: list[int]) -> list[tuple[EngineRadixNode, int]]:
    """(node, tokens of it matched) along the longest page-aligned match of ``tokens``; changes nothing."""
    cache, page = engine.radix_cache, engine.config.page_size
    path: list[tuple[EngineRadixNode, int]] = []
    node, offset, end = cache.root_node, 0, len(tokens) - len(tokens) % page
    while offset < end:
        # By first tokens, not by the children's dict keys: each memory backend keys them its own way.
        first = tokens[offset : offset + page]
        child = next((child for child in node.children.values() if child.key[:page] == first), None)
        if child is None:
            break
        matched = 0
        limit = min(len(child.key), end - offset)
        while matched < limit and child.key[matched] == tokens[offset + matched]:
            matched += 1
        matched -= matched % page
        if matched == 0:
            break
        path.append((child, matched))
        if matched < len(child.key):
            break
        node, offset = child, offset + matched
    return path
