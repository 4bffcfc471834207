"""``double_free``: free a slot that is still in use, so the allocator hands it to another request.

The slot goes back to the free list through the allocator's fault-injection path
(``free_slots_unchecked``), as a premature free in the engine would: ``group: full`` frees the
full-pool page, ``group: swa`` the SWA slot. Whoever is handed it next overwrites its K/V and
canary records while the old owner still reads them. Of the two owners' own frees later, the
second is a double free the allocator logs and ignores.
"""

from __future__ import annotations

from mock_models.faults.targets import FaultContext, pick_cached_unused_slot, pick_live_slot, swa_allocator


def double_free(context: FaultContext) -> str:
    engine, target = context.engine, context.target
    ref = pick_cached_unused_slot(engine, target) if target.slot == "cached_unused" else pick_live_slot(context)
    if target.group == "swa":
        swa_allocator(engine).free_slots_unchecked([ref.swa_slot])
        freed = f"SWA slot {ref.swa_slot}"
    else:
        engine.full_allocator.free_slots_unchecked([ref.full_slot])
        freed = f"the full-pool page of slot {ref.full_slot}"
    return f"freed {freed} while still in use: {ref.describe()}"
