"""Faults in a prefill-to-decode KV transfer (``disaggregation: prefill_decode``).

Each changes the next transfer, which runs right after the step hooks and before the decode
forward that first reads it (``DisaggregatedEngine``), so a fault needs a prompt whose KV is
ready on the prefill side:

* ``transfer_drop_group``: the transfer leaves one pool group's buffers out (``group: full``, the
  full pool and its canary records; ``group: swa``, the SWA state, as sglang#24878's DSv4
  transfer never moved it). The decode slots keep what they held: zeroed records, or another
  request's from before.
* ``transfer_misorder_pages``: the group's source pages (SWA slots) are rotated by one against the
  destination's, so each lands one page off. Needs two pages (slots) in the group.
* ``transfer_foreign_pages``: another request's source pages and SWA slots are delivered instead
  (another ready transfer, else a prefilling request), as far as it reaches; it must hold other
  tokens somewhere the decode side reads.
"""

from __future__ import annotations

from kv_canary_contract import PoolGroup
from mock_models.engine.disaggregation import DisaggregatedEngine, TransferFault, TransferPlan
from mock_models.engine.engine import Engine
from mock_models.engine.request import Request
from mock_models.faults.targets import FaultContext, NoTarget


def transfer_drop_group(context: FaultContext) -> str:
    engine, group = _disaggregated(context.engine), _group(context)
    _, req = _next_transfer(engine)
    engine.next_transfer_fault = TransferFault(drop=group)
    return f"the transfer of {_describe(req)} leaves the {group} group's buffers out (K/V and canary records)"


def transfer_misorder_pages(context: FaultContext) -> str:
    engine, group = _disaggregated(context.engine), _group(context)
    prefill_req, req = _next_transfer(engine)
    units = engine.transfer_plan(prefill_req, req).units(group)
    if units < 2:
        what = "page" if group == "full" else "SWA slot"
        raise NoTarget(f"the next transfer moves {units} {what} of the {group} group; misordering needs two")
    engine.next_transfer_fault = TransferFault(misorder=group)
    return f"the transfer of {_describe(req)} delivers each of its {units} {group}-group units one unit off"


def transfer_foreign_pages(context: FaultContext) -> str:
    engine = _disaggregated(context.engine)
    prefill_req, req = _next_transfer(engine)
    reads_full = engine.config.model_mode.value != "dsv4"  # dsv4 guards the SWA window only
    first_read = 0 if reads_full else engine.decode_kv_cache.swa_tail_start(req.prompt_len)
    for donor_req, donor in _donors(engine, exclude=prefill_req):
        covered = min(req.prompt_len, donor_req.kv_len if donor_req.kv_len else donor_req.prompt_len)
        if req.origin_input_ids[first_read:covered] != donor_req.token_ids[first_read:covered]:
            engine.next_transfer_fault = TransferFault(donor=donor)
            return f"the transfer of {_describe(req)} delivers request {donor_req.rid[:8]}'s pages instead"
    raise NoTarget("no other prefilled request holds other tokens where the decode side reads to deliver instead")


def _disaggregated(engine: Engine) -> DisaggregatedEngine:
    if not isinstance(engine, DisaggregatedEngine):
        raise NoTarget("the engine transfers no KV (disaggregation none)")
    return engine


def _next_transfer(engine: DisaggregatedEngine) -> tuple[Request, Request]:
    ready = engine.ready_transfers
    if not ready:
        raise NoTarget("no prompt's KV is ready to be transferred before this forward")
    return ready[0]


def _group(context: FaultContext) -> PoolGroup:
    group = context.target.group
    assert group is not None  # the kind takes target.group; the contract resolved its default
    return group


def _donors(engine: DisaggregatedEngine, *, exclude: Request) -> list[tuple[Request, TransferPlan]]:
    donors = [(prefill_req, engine.transfer_plan(prefill_req, req)) for prefill_req, req in engine.ready_transfers]
    for prefill_req in engine.prefill.scheduler.running:
        if prefill_req.kv_len:
            n = prefill_req.kv_len - prefill_req.kv_len % engine.config.page_size
            donors.append((prefill_req, _plan_of_running(engine, prefill_req, n)))
    return [(donor_req, plan) for donor_req, plan in donors if donor_req is not exclude and plan.source_pages]


def _plan_of_running(engine: DisaggregatedEngine, prefill_req: Request, tokens: int) -> TransferPlan:
    """The source side of a transfer of ``prefill_req``'s first ``tokens`` (its SWA tail as far as resident)."""
    page = engine.config.page_size
    slots = engine.prefill.req_to_token_pool.req_to_token[prefill_req.req_pool_idx, :tokens].tolist()
    tail = engine.decode_kv_cache.swa_tail_start(tokens)
    swa: list[int] = []
    if engine.prefill.swa_allocator is not None:
        swa = engine.prefill.swa_allocator.full_to_swa_index_mapping[slots[tail:]].tolist()
    return TransferPlan(
        rid=prefill_req.rid,
        source_pages=tuple(slot // page for slot in slots[::page]),
        destination_pages=(),
        source_swa_slots=tuple(swa),
        destination_swa_slots=(),
    )


def _describe(req: Request) -> str:
    return f"request {req.rid[:8]}'s prompt ({req.prompt_len} tokens)"
