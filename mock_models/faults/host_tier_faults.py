"""Faults in the host KV tier (``host_tier_tokens > 0``).

* ``restore_wrong_slots``: the next load-back of a host node copies each page (and SWA row) into
  its neighbour's slots while the node's value names the right ones. Due only while a waiting
  request's prefix is on the host (its admission loads it back); in dsv4 it waits for a load-back
  that brings SWA rows back, the only state the canary guards there.
* ``stale_swa_translation``: as sglang#25889 (a translation of full to SWA slots kept across a
  load-back that rebuilt the mapping): a node loaded back recently gets, in
  ``full_to_swa_index_mapping``, the SWA slots its tokens had before it was offloaded. Taken only
  where a running request's window reads one of those stale slots and another position owns it
  now, so that the stale translation reads someone else's row.
* ``host_copy_overwrite``: as TensorRT-LLM#8813 (host offload restoring other prompts' KV): the
  host copy of an offloaded node is overwritten by another host node's bytes, records included.
  The node taken is the deepest on a waiting request's host path that holds what the canary
  guards (SWA rows in dsv4), else the most recently used such host node.
"""

from __future__ import annotations

import torch

from mock_models.config import ModelMode
from mock_models.engine.engine import Engine
from mock_models.engine.host_tier import HostNode, HostTieredRadixCache, Restore
from mock_models.engine.request import Request
from mock_models.faults.targets import FaultContext, NoTarget, lockers, node_depth, swa_allocator


def restore_wrong_slots(context: FaultContext) -> str:
    engine = context.engine
    cache = _tiered(engine)
    req, host_path = _waiting_on_host(engine, cache)
    swa_only = engine.config.model_mode is ModelMode.DSV4
    cache.arm_wrong_slots(swa_rows_only=swa_only)
    unit = "SWA rows" if swa_only else "pages and SWA rows"
    return (
        f"the next load-back (request {req.rid[:8]}'s prefix, {sum(len(host.key) for host in host_path)} tokens on "
        f"the host) copies its {unit} into their neighbours' slots"
    )


def stale_swa_translation(context: FaultContext) -> str:
    engine = context.engine
    cache = _tiered(engine)
    mapping = swa_allocator(engine).full_to_swa_index_mapping
    for restore in reversed(cache.restores):
        stale = _stale_positions(context, restore, mapping)
        if stale:
            full = torch.tensor(restore.full_slots, dtype=torch.int64, device=mapping.device)
            old = torch.tensor(restore.swa_slots_at_offload, dtype=torch.int64, device=mapping.device)
            keep = old != 0
            mapping[full[keep]] = old[keep]
            return (
                f"radix node {restore.node.id} (positions [{node_depth(restore.node)}, "
                f"{node_depth(restore.node) + len(restore.node.key)})), loaded back from the host, translates to the "
                f"SWA slots it had before its offload; {len(stale)} of them are in a running request's window and "
                "owned by other positions now"
            )
    raise NoTarget(
        "no node loaded back from the host is in a running request's window with a pre-offload SWA slot "
        "another position owns now"
    )


def host_copy_overwrite(context: FaultContext) -> str:
    engine = context.engine
    cache = _tiered(engine)
    needs_swa = engine.config.model_mode is ModelMode.DSV4

    def holds_guarded(host: HostNode) -> bool:
        return host.copy.swa_slots is not None or not needs_swa

    target: HostNode | None = None
    for req in engine.scheduler.waiting:
        path = [host for host in cache.host_path(req.origin_input_ids[:-1]) if holds_guarded(host)]
        if path:
            target = path[-1]
            break
    candidates = [host for host in cache.host_nodes() if holds_guarded(host)]
    if target is None and candidates:
        target = max(candidates, key=lambda host: (host.last_access_time, host.id))
    if target is None:
        raise NoTarget("no offloaded node holds what the canary guards" + (" (SWA rows)" if needs_swa else ""))
    donors = [host for host in candidates if host is not target and host.key[: len(target.key)] != target.key]
    if not donors:
        raise NoTarget(f"no second host node with other tokens to overwrite host node {target.id} with")
    donor = max(donors, key=lambda host: (len(host.key), host.id))
    pages = cache.host.overwrite(target.copy, with_copy=donor.copy)
    return f"the host copy of an offloaded node ({len(target.key)} tokens) is overwritten by another's ({pages} pages)"


def _tiered(engine: Engine) -> HostTieredRadixCache:
    if not isinstance(engine.radix_cache, HostTieredRadixCache):
        raise NoTarget("the engine has no host tier (host_tier_tokens 0)")
    return engine.radix_cache


def _waiting_on_host(engine: Engine, cache: HostTieredRadixCache) -> tuple[Request, list[HostNode]]:
    for req in engine.scheduler.waiting:
        path = cache.host_path(req.origin_input_ids[:-1])
        if path:
            return req, path
    raise NoTarget("no waiting request's prefix is on the host, so nothing is loaded back next")


def _stale_positions(context: FaultContext, restore: Restore, mapping: torch.Tensor) -> list[int]:
    """Positions of the restored node the coming forward's windows read, whose pre-offload SWA slot
    another position owns now; empty if the node is gone or no longer has those SWA rows."""
    engine = context.engine
    node = restore.node
    if restore.swa_slots is None or node.parent is None or node not in node.parent.children.values():
        return []
    current = mapping[torch.tensor(restore.full_slots, dtype=torch.int64, device=mapping.device)].tolist()
    if current != restore.swa_slots:
        return []
    owned = set(mapping.tolist())  # host read of the whole map: fault injection only
    start, window = node_depth(node), engine.config.swa_window
    read = {
        position
        for req in lockers(context, node)
        for position in range(max(start, req.kv_len - window), min(start + len(node.key), req.kv_len))
    }
    return [
        position
        for position in sorted(read)
        if (old := restore.swa_slots_at_offload[position - start]) not in (0, current[position - start])
        and old in owned
    ]
