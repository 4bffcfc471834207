"""What a fault lands on in a live SGLang 0.5.23 scheduler, chosen right before a forward runs.

The batch about to run is known (``Scheduler.run_batch``'s argument), so live slots are taken
from its requests: positions whose KV exists before this forward, ``[0, kv_len)`` with
``kv_len = seq_len - 1`` in a decode batch and the cached prefix in an extend batch. The canary
reads all of them (FULL group) or the window ``[kv_len - window, kv_len)`` (SWA group) in this
very forward. Requests are tried by tokens left to generate, most first; within one, the newest
position (it stays in the window longest).

Cached slots come from SGLang's radix tree: ``UnifiedRadixCache`` on its Python tree core (the
server runs with ``SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND=python``; the Rust core keeps its nodes
out of reach) or a ``RadixCache``.

Selection reads device tensors on the host (``tolist``): it runs between forwards, in test runs.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import torch

from kv_canary_contract import ResolvedTarget as Target


class NoTarget(Exception):
    """Nothing in the server's current state fits the target; the message says what was looked for."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LiveServer:
    """The SGLang objects of one scheduler that faults reach."""

    scheduler: Any  # sglang.srt.managers.scheduler.Scheduler (untyped)
    window: int | None  # the SWA layers' window in tokens; None without an SWA pool

    @property
    def model_runner(self) -> Any:
        return self.scheduler.tp_worker.model_runner

    @property
    def req_to_token(self) -> torch.Tensor:
        return self.scheduler.req_to_token_pool.req_to_token

    @property
    def kv_pool(self) -> Any:
        return self.model_runner.token_to_kv_pool

    @property
    def allocator(self) -> Any:
        return self.scheduler.token_to_kv_pool_allocator

    @property
    def full_to_swa(self) -> torch.Tensor | None:
        return getattr(self.allocator, "full_to_swa_index_mapping", None) if self.window is not None else None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class BatchRequest:
    """A request of the batch about to run: its ``req_to_token`` row and the KV it has before the forward."""

    req: Any  # sglang.srt.managers.schedule_batch.Req
    index: int  # its place in the batch
    row: int
    kv_len: int

    @property
    def tokens_left(self) -> int:
        return self.req.sampling_params.max_new_tokens - len(self.req.output_ids)

    def describe(self) -> str:
        return f"request {str(self.req.rid)[:8]}"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LiveFaultContext:
    server: LiveServer
    batch: Any  # the ScheduleBatch the fault precedes
    target: Target
    rng: random.Random
    step: int


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SlotRef:
    """A full-pool slot at a position, and its SWA slot (0: none)."""

    full_slot: int
    swa_slot: int
    position: int
    owner: str  # "request abcd1234" or "radix node 17"

    def describe(self) -> str:
        swa = f", SWA slot {self.swa_slot}" if self.swa_slot else ""
        return f"full slot {self.full_slot}{swa} ({self.owner}, position {self.position})"


# -- the batch about to run ---------------------------------------------------------------------------


def is_decode(batch: Any) -> bool:
    return bool(batch.forward_mode.is_decode())


def batch_requests(batch: Any) -> list[BatchRequest]:
    """The batch's requests, most tokens left first."""
    rows = batch.req_pool_indices.tolist()
    if is_decode(batch):
        kv_lens = [n - 1 for n in batch.seq_lens.tolist()]
    else:
        kv_lens = list(batch.prefix_lens or [0] * len(rows))
    found = [
        BatchRequest(req=req, index=index, row=row, kv_len=kv_len)
        for index, (req, row, kv_len) in enumerate(zip(batch.reqs, rows, kv_lens, strict=True))
    ]
    return sorted(found, key=lambda request: -request.tokens_left)


def swa_slots_of(server: LiveServer, full_slots: list[int]) -> list[int]:
    mapping = server.full_to_swa
    if mapping is None or not full_slots:
        return [0] * len(full_slots)
    return mapping[torch.tensor(full_slots, device=mapping.device)].tolist()


def live_slots(server: LiveServer, request: BatchRequest, target: Target) -> list[SlotRef]:
    """The positions of ``request`` the target group's canary reads in the coming forward."""
    first = max(0, request.kv_len - server.window) if server.window is not None else 0
    lo, hi = (first if target.group == "swa" else 0), request.kv_len
    if target.position == "in_window":
        lo = max(lo, first)
    elif target.position == "out_of_window":
        lo, hi = 0, first
    if hi <= lo:
        return []
    full_slots = server.req_to_token[request.row, lo:hi].tolist()
    swa_slots = swa_slots_of(server, full_slots)
    needs_swa_slot = target.group == "swa"
    return [
        SlotRef(full_slot=full, swa_slot=swa, position=lo + offset, owner=request.describe())
        for offset, (full, swa) in enumerate(zip(full_slots, swa_slots, strict=True))
        if swa or not needs_swa_slot
    ]


def pick_live_slot(context: LiveFaultContext) -> tuple[SlotRef, BatchRequest]:
    """The newest live slot of the first request (most tokens left) that has one."""
    for request in batch_requests(context.batch):
        slots = live_slots(context.server, request, context.target)
        if slots:
            return slots[-1], request
    raise NoTarget(
        f"no request of this {context.batch.forward_mode.name} batch reads a position {context.target.where()}"
    )


def other_live_slot(context: LiveFaultContext, avoid: SlotRef) -> SlotRef:
    """A live slot at another position than ``avoid``, preferably another request's."""
    requests = batch_requests(context.batch)
    requests.sort(key=lambda request: request.describe() == avoid.owner)  # stable: other requests first
    anywhere = dataclasses.replace(context.target, position=None)
    for request in requests:
        for ref in reversed(live_slots(context.server, request, anywhere)):
            if ref.position != avoid.position and ref.full_slot != avoid.full_slot:
                return ref
    raise NoTarget(f"no second live slot {context.target.where()} to point {avoid.describe()} at")


# -- the radix tree ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CachedNode:
    node: Any
    id: int
    depth: int  # position of its first token
    slots: torch.Tensor  # full-pool slots, one per token
    lock_ref: int
    swa_resident: bool
    is_leaf: bool
    last_access_time: float

    def describe(self) -> str:
        return f"radix node {self.id} (positions [{self.depth}, {self.depth + len(self.slots)}))"


def cached_nodes(tree_cache: Any) -> list[CachedNode]:
    """Every node of the tree but the root, parents first."""
    unified = getattr(tree_cache, "tree_core", None) is not None
    if unified:
        try:
            root = tree_cache.tree_core.root_node
        except NotImplementedError:
            raise NoTarget(
                "the radix tree runs on SGLang's Rust tree core, whose nodes are out of reach; start the server "
                "with SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND=python"
            ) from None
        from sglang.srt.mem_cache.unified_cache.component_type import ComponentType

        has_swa = ComponentType.SWA in getattr(tree_cache, "components", {})
    else:
        root = tree_cache.root_node
    found: list[CachedNode] = []
    stack = [(child, 0) for child in root.children.values()]
    while stack:
        node, depth = stack.pop()
        if unified:
            full = node.component_data[ComponentType.FULL]
            slots, lock_ref = full.value, full.lock_ref
            swa_resident = not has_swa or node.component_data[ComponentType.SWA].value is not None
        else:
            slots, lock_ref, swa_resident = node.value, node.lock_ref, True
        length = len(node.key)
        if slots is not None and length:
            found.append(
                CachedNode(
                    node=node,
                    id=node.id,
                    depth=depth,
                    slots=slots[:length],
                    lock_ref=lock_ref,
                    swa_resident=swa_resident,
                    is_leaf=not node.children,
                    last_access_time=node.last_access_time,
                )
            )
        stack.extend((child, depth + length) for child in node.children.values())
    return found


def pick_cached_unused_slot(context: LiveFaultContext) -> SlotRef:
    """The last slot of the most recently used node no running request locks."""
    needs_swa = context.target.group == "swa"
    nodes = [
        node
        for node in cached_nodes(context.server.scheduler.tree_cache)
        if node.lock_ref == 0 and (node.swa_resident or not needs_swa)
    ]
    if not nodes:
        raise NoTarget(f"the radix cache holds no {'SWA-resident ' if needs_swa else ''}node that no request locks")
    node = max(nodes, key=lambda node: (node.last_access_time, node.id))
    full_slot = int(node.slots[-1])
    return SlotRef(
        full_slot=full_slot,
        swa_slot=swa_slots_of(context.server, [full_slot])[0],
        position=node.depth + len(node.slots) - 1,
        owner=f"radix node {node.id}",
    )


def node_readers(context: LiveFaultContext, node: CachedNode) -> list[BatchRequest]:
    """Requests of the batch whose rows hold the node's slots at its positions (they read it)."""
    end = node.depth + len(node.slots)
    slots = node.slots.to(context.server.req_to_token.device, torch.int32)
    return [
        request
        for request in batch_requests(context.batch)
        if request.kv_len >= end and torch.equal(context.server.req_to_token[request.row, node.depth : end], slots)
    ]


# -- the allocators ------------------------------------------------------------------------------------


def full_allocator(server: LiveServer) -> Any:
    return getattr(server.allocator, "full_attn_allocator", server.allocator)


def swa_allocator(server: LiveServer) -> Any:
    return server.allocator.swa_attn_allocator


def free_to_front(allocator: Any, slots: list[int]) -> None:
    """Put ``slots`` first in the allocator's free list, so the next allocations hand them out.

    SGLang's ``free`` appends to the back, and in a roomy pool a slot freed there is handed out
    again only after every older free slot: a double free would stay latent for many forwards. A
    busy server reuses it soon; this is what the scenarios' detection bounds assume.
    """
    if not hasattr(allocator, "free_pages"):
        raise NoTarget(f"{type(allocator).__name__} keeps no free_pages list this injector knows how to change")
    freed = torch.tensor(slots, dtype=allocator.free_pages.dtype, device=allocator.free_pages.device)
    allocator.free_pages = torch.cat([freed, allocator.free_pages])
