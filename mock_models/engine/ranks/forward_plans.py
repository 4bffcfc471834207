"""A forward's plan: taken from rank 0's scheduled batch, replayed as the same batch on another rank."""

from __future__ import annotations

import torch

from mock_models.engine.forward_batch import ForwardBatch, ForwardMode
from mock_models.engine.memory_protocols import RequestRows
from mock_models.engine.ranks.messages import ForwardPlan
from mock_models.models.forward_inputs import KvPool


def plan_of(batch: ForwardBatch, full_to_swa_index_mapping: torch.Tensor | None) -> ForwardPlan:
    """What the other ranks need of ``batch`` and of rank 0's request rows. Reads device values on
    the host (a rank's plan is sent from the host): several ranks cost a copy per forward."""
    rows = batch.req_to_token_pool
    lengths = list(zip(batch.req_pool_indices_cpu, batch.seq_lens_cpu.tolist(), strict=True))
    return ForwardPlan(
        forward_mode=batch.forward_mode.value,
        input_ids=batch.input_ids.tolist(),
        positions=batch.positions.tolist(),
        req_pool_indices=list(batch.req_pool_indices_cpu),
        extend_prefix_lens=list(batch.extend_prefix_lens_cpu),
        extend_seq_lens=list(batch.extend_seq_lens_cpu),
        out_cache_loc=batch.out_cache_loc.tolist(),
        req_to_token_rows=[rows.req_to_token[row, :n].cpu() for row, n in lengths],
        req_token_id_rows=[rows.req_token_ids[row, :n].cpu() for row, n in lengths],
        full_to_swa_index_mapping=None if full_to_swa_index_mapping is None else full_to_swa_index_mapping.cpu(),
    )


def batch_of(
    plan: ForwardPlan,
    *,
    req_to_token_pool: RequestRows,
    token_to_kv_pool: KvPool,
    full_to_swa_index_mapping: torch.Tensor | None,
    device: torch.device,
) -> ForwardBatch:
    """Bring this rank's copies of the request rows and the SWA map up to rank 0's, and build its batch."""
    for row, slots, tokens in zip(plan.req_pool_indices, plan.req_to_token_rows, plan.req_token_id_rows, strict=True):
        req_to_token_pool.req_to_token[row, : len(slots)] = slots.to(device)
        req_to_token_pool.req_token_ids[row, : len(tokens)] = tokens.to(device)
    if full_to_swa_index_mapping is not None and plan.full_to_swa_index_mapping is not None:
        full_to_swa_index_mapping.copy_(plan.full_to_swa_index_mapping)
    seq_lens = [prefix + n for prefix, n in zip(plan.extend_prefix_lens, plan.extend_seq_lens, strict=True)]
    starts = [sum(plan.extend_seq_lens[:index]) for index in range(len(plan.extend_seq_lens))]

    def on_device(values: list[int], dtype: torch.dtype = torch.int64) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

    return ForwardBatch(
        forward_mode=ForwardMode(plan.forward_mode),
        batch_size=len(plan.req_pool_indices),
        input_ids=on_device(plan.input_ids),
        positions=on_device(plan.positions),
        req_pool_indices=on_device(plan.req_pool_indices),
        req_pool_indices_cpu=list(plan.req_pool_indices),
        seq_lens=on_device(seq_lens),
        seq_lens_cpu=torch.tensor(seq_lens, dtype=torch.int64),
        extend_prefix_lens=on_device(plan.extend_prefix_lens, torch.int32),
        extend_seq_lens=on_device(plan.extend_seq_lens, torch.int32),
        extend_prefix_lens_cpu=list(plan.extend_prefix_lens),
        extend_seq_lens_cpu=list(plan.extend_seq_lens),
        extend_start_loc_cpu=starts,
        out_cache_loc=on_device(plan.out_cache_loc),
        req_to_token_pool=req_to_token_pool,
        token_to_kv_pool=token_to_kv_pool,
    )
