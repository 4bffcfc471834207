"""The recorded tokens of each request row, filled from SGLang's own token snapshot.

SGLang 0.5.23 keeps no device table of the tokens a request has recorded, but with
``SGLANG_KV_CANARY_ENABLE_VERIFY_TOKEN_ASSERT=1`` every ``ForwardBatch`` carries a host snapshot of
each request's prompt and sampled tokens (``req_all_ids_flat``, with ``req_all_ids_lens`` per
request, in batch order). ``RequestTokenTable.update`` scatters that snapshot into a table shaped
like ``req_to_token`` before the forward runs, so the canary's ``token`` (verify) and
``write_token`` (write) checks compare against what the scheduler recorded. Without the variable
the table stays ``TOKEN_UNKNOWN`` and those two checks have nothing to compare.

The table is allocated once, before CUDA-graph capture, and written in place: a captured graph
reads it through the address it saw at capture. The update copies every token of the batch's
requests to the device, once per forward; positions past a request's length are never read.
"""

from __future__ import annotations

from typing import Any

import torch

from kv_canary.plans import TOKEN_UNKNOWN

TOKEN_SNAPSHOT_VARIABLE = "SGLANG_KV_CANARY_ENABLE_VERIFY_TOKEN_ASSERT"


class RequestTokenTable:
    def __init__(self, req_to_token: torch.Tensor) -> None:
        self.req_token_ids = torch.full(
            req_to_token.shape, TOKEN_UNKNOWN, dtype=torch.int64, device=req_to_token.device
        )
        self.updates = 0  # forwards whose batch carried a snapshot

    def update(self, forward_batch: Any) -> None:
        """Write the batch's token snapshot into its requests' rows; nothing when it carries none."""
        flat = getattr(forward_batch, "req_all_ids_flat", None)
        lens = getattr(forward_batch, "req_all_ids_lens", None)
        if flat is None or lens is None or lens.numel() == 0:
            return
        device = self.req_token_ids.device
        lens = lens.to(torch.int64)
        total = int(flat.shape[0])  # a host tensor: no device sync
        rows = torch.repeat_interleave(
            forward_batch.req_pool_indices.to(device, torch.int64), lens.to(device), output_size=total
        )
        starts = torch.cumsum(lens, 0) - lens
        positions = torch.arange(total, dtype=torch.int64) - torch.repeat_interleave(starts, lens, output_size=total)
        self.req_token_ids[rows, positions.to(device, non_blocking=True)] = flat.to(
            device, torch.int64, non_blocking=True
        )
        self.updates += 1
