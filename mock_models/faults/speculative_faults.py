"""``draft_position_shift``: a speculative verify window fed one position late.

The draft worker hands the target's verify forward its window's positions; this fault shifts one
decoding request's next window by one, so the target writes the window's K/V and canary records at
the wrong positions. (SGLang#25015's late draft positions reached only the draft model: bug mode
``draft-decode-positions-off-by-one``.)
"""

from __future__ import annotations

from mock_models.engine.speculative.scheduler import SpeculativeScheduler
from mock_models.faults.targets import FaultContext, NoTarget


def draft_position_shift(context: FaultContext) -> str:
    engine = context.engine
    scheduler = engine.scheduler
    if not isinstance(scheduler, SpeculativeScheduler):
        raise NoTarget("the engine does not decode speculatively (speculative_num_steps 0)")
    if any(req.needs_prefill for req in scheduler.running):
        raise NoTarget("the next forward prefills; no verify window is written before it")
    # Applied before scheduling (the window is drafted when the verify batch is scheduled): with no
    # prompt left to prefill, every running request is in the coming verify forward.
    reqs = [req for req in scheduler.running if req.output_ids]
    if not reqs:
        raise NoTarget("no request is decoding")
    req = reqs[0]
    scheduler.draft_worker.shift_next_window(req)
    return f"request {req.rid[:8]}'s next verify window (from position {req.kv_len}) is fed one position late"
