"""Faults in the maps from a position to its slot: ``req_to_token_remap`` (a request's
token-to-slot row) and ``remap_swa_slot`` (``full_to_swa_index_mapping``).

Both point one live entry at another live slot that holds a different position, so the canary
reading the entry finds the other slot's record: a wrong position, and a chain hash its
successor no longer matches.
"""

from __future__ import annotations

from mock_models.faults.targets import FaultContext, NoTarget, other_live_slot, pick_live_slot, swa_allocator


def req_to_token_remap(context: FaultContext) -> str:
    engine = context.engine
    ref = pick_live_slot(context)
    replacement = other_live_slot(context, avoid=ref)
    engine.req_to_token_pool.req_to_token[ref.reader.req_pool_idx, ref.position] = replacement.full_slot
    return f"req_to_token of {ref.describe()} now points at {replacement.describe()}"


def remap_swa_slot(context: FaultContext) -> str:
    engine = context.engine
    ref = pick_live_slot(context)
    replacement = other_live_slot(context, avoid=ref)
    if replacement.swa_slot == ref.swa_slot:
        raise NoTarget(f"{ref.describe()} and {replacement.describe()} share their SWA slot")
    swa_allocator(engine).full_to_swa_index_mapping[ref.full_slot] = replacement.swa_slot
    return (
        f"full_to_swa_index_mapping[{ref.full_slot}] was {ref.swa_slot}, now {replacement.swa_slot}: "
        f"{ref.describe()} reads the SWA slot of {replacement.describe()}"
    )
