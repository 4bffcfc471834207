"""``skip_canary_write``: one rank's canary does not write the records of one forward's new slots,
as a rank whose write launch was skipped (or lost) would.

The coming forward runs whole on every rank; on ``target.rank`` the HEAD and TAIL records of the
slots it wrote, in every guarded group and K/V half, are put back as they were before it. The
next forward that reads one of those slots on that rank verifies a record of another token or
position (or one never written): ``position``, ``chain_hash``, ``token``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kv_canary.launch_tags import Phase, PoolGroupKind
from mock_models.engine.forward_batch import ForwardBatch
from mock_models.engine.model_runner import ModelRunner
from mock_models.faults.targets import FaultContext, NoTarget, next_forward_requests, on_target_rank


def skip_canary_write(context: FaultContext) -> str:
    if not next_forward_requests(context):
        raise NoTarget(f"forward {context.step} runs no request")
    where = on_target_rank(context, skip_next_canary_write)
    return f"the canary records of the slots forward {context.step} writes put back as they were after it{where}"


def skip_next_canary_write(runner: ModelRunner) -> None:
    """On the rank whose runner this is (a job: it crosses to that rank's process by name)."""
    runner.intercept_next_forward(_forward_without_canary_writes(runner))


def _forward_without_canary_writes(runner: ModelRunner) -> Callable[[ForwardBatch, Callable[[], None]], None]:
    def run(batch: ForwardBatch, forward: Callable[[], None]) -> None:
        canary = runner.canary
        if canary is None:  # the contract refuses this kind without a canary
            raise RuntimeError(f"rank {runner.layout.rank}: skip_canary_write needs the canary on")
        saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for group in canary.groups:
            slots = batch.out_cache_loc
            if group.kind is PoolGroupKind.SWA and group.full_to_swa_index_mapping is not None:
                slots = group.full_to_swa_index_mapping[slots]
                slots = slots[slots != 0]  # no SWA slot: nothing written there
            for half in group.halves:
                for phase in (Phase.HEAD, Phase.TAIL):
                    records = group.records(phase, half)
                    saved.append((records, slots, records[slots].clone()))
        forward()
        for records, slots, before in saved:
            records[slots] = before

    return run
