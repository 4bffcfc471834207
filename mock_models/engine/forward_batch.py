"""What one forward computes, with SGLang's field names (the canary's extractor reads them).

``ForwardBatch`` is the models' ``ForwardInputs`` (``mock_models.models.forward_inputs``).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

import torch

from mock_models.engine.memory_protocols import RequestRows
from mock_models.engine.request import Request
from mock_models.models.forward_inputs import KvPool


class ForwardMode(enum.Enum):
    EXTEND = "extend"  # prompt tokens (a whole prompt or one chunk of it), any number per request
    DECODE = "decode"  # one token per request

    def is_extend(self) -> bool:
        return self is ForwardMode.EXTEND

    def is_decode(self) -> bool:
        return self is ForwardMode.DECODE


@dataclasses.dataclass(kw_only=True, slots=True)
class ForwardBatch:
    """Device tensors plus their host copies (``*_cpu``), so nothing here needs a device read.

    Tokens are laid out request after request, each request's in position order.
    """

    forward_mode: ForwardMode
    batch_size: int
    input_ids: torch.Tensor  # int64 [N]: what the model is fed
    positions: torch.Tensor  # int64 [N]
    req_pool_indices: torch.Tensor  # int64 [B]: rows of req_to_token_pool
    req_pool_indices_cpu: list[int]
    seq_lens: torch.Tensor  # int64 [B]: prefix + new tokens
    seq_lens_cpu: torch.Tensor  # int64 [B], on the host
    extend_prefix_lens: torch.Tensor  # int32 [B]: tokens cached before this forward
    extend_seq_lens: torch.Tensor  # int32 [B]: tokens this forward writes (1 for decode)
    extend_prefix_lens_cpu: list[int]
    extend_seq_lens_cpu: list[int]
    extend_start_loc_cpu: list[int]  # index of each request's first token in input_ids
    out_cache_loc: torch.Tensor  # int64 [N]: full-pool slots written, one per token
    req_to_token_pool: RequestRows
    token_to_kv_pool: KvPool

    @classmethod
    def build(
        cls,
        *,
        forward_mode: ForwardMode,
        items: Sequence[tuple[Request, int, int]],
        out_cache_loc: list[int],
        req_to_token_pool: RequestRows,
        token_to_kv_pool: KvPool,
        device: torch.device,
    ) -> ForwardBatch:
        """``items``: (request, first position computed, positions computed) per request."""
        prefix_lens = [start for _, start, _ in items]
        extend_lens = [n for _, _, n in items]
        input_ids: list[int] = []
        positions: list[int] = []
        starts: list[int] = []
        for req, prefix, n in items:
            starts.append(len(input_ids))
            input_ids += req.fill_ids[prefix : prefix + n]
            positions += range(prefix, prefix + n)
        seq_lens = [p + n for p, n in zip(prefix_lens, extend_lens, strict=True)]
        rows = [req.req_pool_idx for req, _, _ in items]

        def on_device(values: list[int], dtype: torch.dtype = torch.int64) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

        return cls(
            forward_mode=forward_mode,
            batch_size=len(items),
            input_ids=on_device(input_ids),
            positions=on_device(positions),
            req_pool_indices=on_device(rows),
            req_pool_indices_cpu=rows,
            seq_lens=on_device(seq_lens),
            seq_lens_cpu=torch.tensor(seq_lens, dtype=torch.int64),
            extend_prefix_lens=on_device(prefix_lens, torch.int32),
            extend_seq_lens=on_device(extend_lens, torch.int32),
            extend_prefix_lens_cpu=prefix_lens,
            extend_seq_lens_cpu=extend_lens,
            extend_start_loc_cpu=starts,
            out_cache_loc=on_device(out_cache_loc),
            req_to_token_pool=req_to_token_pool,
            token_to_kv_pool=token_to_kv_pool,
        )
