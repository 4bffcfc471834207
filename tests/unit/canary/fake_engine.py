"""A minimal engine for the canary's unit tests: an MHA pool, request rows and forwards.

It lays requests out the way a serving engine does (prefix slots shared between requests,
new slots from a free list, K/V written by the model at ``out_cache_loc``) so that faults
can be planted precisely; the full engine lives in ``mock_models``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from kv_canary import CanaryConfig, CanaryManager, install_canary


class MHATokenToKVPool:  # named like SGLang's pool: the canary picks its adapter by class name
    def __init__(
        self, *, num_slots: int, device: str | None, num_layers: int = 2, heads: int = 2, head_dim: int = 4
    ) -> None:
        self.page_size = 1
        self.k_buffer = [torch.zeros(num_slots, heads, head_dim, device=device) for _ in range(num_layers)]
        self.v_buffer = [torch.zeros(num_slots, heads, head_dim, device=device) for _ in range(num_layers)]

    def get_contiguous_buf_infos(self):
        buffers = self.k_buffer + self.v_buffer
        return (
            [b.data_ptr() for b in buffers],
            [b.nbytes for b in buffers],
            [b[0].nbytes * self.page_size for b in buffers],
        )


class ReqToTokenPool:
    def __init__(self, *, rows: int, max_context: int, device: str | None) -> None:
        self.req_to_token = torch.zeros(rows, max_context, dtype=torch.int32, device=device)
        self.req_token_ids = torch.full((rows, max_context), -1, dtype=torch.int64, device=device)


@dataclasses.dataclass
class ForwardBatch:
    req_pool_indices: torch.Tensor
    seq_lens: torch.Tensor
    extend_prefix_lens: torch.Tensor
    extend_seq_lens: torch.Tensor
    extend_prefix_lens_cpu: list[int] | None  # None: no host copy, as under graph capture
    extend_seq_lens_cpu: list[int] | None
    out_cache_loc: torch.Tensor
    req_to_token_pool: ReqToTokenPool


class TinyModel(torch.nn.Module):
    """Writes K/V that depend on token, position and layer, like a real first layer would."""

    def __init__(self, pool: Any) -> None:
        super().__init__()
        self.pool = pool
        self.calls = 0

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch) -> None:
        self.calls += 1
        base = (input_ids * 31 + positions).to(torch.float32)[:, None, None]
        for layer, (k, v) in enumerate(zip(self.pool.k_buffer, self.pool.v_buffer, strict=True)):
            k[forward_batch.out_cache_loc] = base + layer + torch.arange(k[0].numel(), device=k.device).view(k[0].shape)
            v[forward_batch.out_cache_loc] = -base - layer


@dataclasses.dataclass
class Request:
    row: int
    tokens: list[int]  # every token whose slot is allocated (the KV length after its last forward)
    cached: int = 0  # tokens whose K/V has been written


class FakeEngine:
    """Subclasses with another pool override ``_allocate_slots`` and ``_after_forward``."""

    def __init__(
        self,
        config: CanaryConfig,
        *,
        device: str | None = None,
        num_slots: int = 256,
        rows: int = 16,
        max_context: int = 128,
        model_class: type[TinyModel] = TinyModel,
        pool: Any = None,
        swa_window: int | None = None,
    ) -> None:
        self.device = device  # None: torch's default device, which the GPU tests set to CUDA
        self.pool = MHATokenToKVPool(num_slots=num_slots, device=device) if pool is None else pool
        self.req_pool = ReqToTokenPool(rows=rows, max_context=max_context, device=device)
        self.model = model_class(self.pool)
        self.free_slots = list(range(1, num_slots))
        self.free_rows = list(range(1, rows))
        self.canary: CanaryManager | None = install_canary(
            model=self.model, kv_pool=self.pool, req_to_token_pool=self.req_pool, config=config, swa_window=swa_window
        )

    def add_request(
        self, tokens: list[int], *, share_prefix_with: Request | None = None, shared_len: int = 0
    ) -> Request:
        request = Request(row=self.free_rows.pop(0), tokens=list(tokens))
        if share_prefix_with is not None:
            shared = self.req_pool.req_to_token[share_prefix_with.row, :shared_len]
            self.req_pool.req_to_token[request.row, :shared_len] = shared
            request.cached = shared_len
        self.req_pool.req_token_ids[request.row, : len(tokens)] = torch.tensor(tokens, device=self.device)
        return request

    def forward(self, requests: list[Request], new_tokens: list[list[int]] | None = None) -> None:
        """One forward: each request writes its uncached tokens, after appending ``new_tokens``."""
        for index, request in enumerate(requests):
            for token in new_tokens[index] if new_tokens else []:
                self.req_pool.req_token_ids[request.row, len(request.tokens)] = token
                request.tokens.append(token)
        prefix = [r.cached for r in requests]
        extend = [len(r.tokens) - r.cached for r in requests]
        slots: list[int] = []
        input_ids: list[int] = []
        positions: list[int] = []
        for request, start, count in zip(requests, prefix, extend, strict=True):
            new = self._allocate_slots(count)
            self.req_pool.req_to_token[request.row, start : start + count] = torch.tensor(
                new, dtype=torch.int32, device=self.device
            )
            slots += new
            input_ids += request.tokens[start : start + count]
            positions += range(start, start + count)

        def on_device(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64, device=self.device)

        batch = ForwardBatch(
            req_pool_indices=on_device([r.row for r in requests]),
            seq_lens=on_device([len(r.tokens) for r in requests]),
            extend_prefix_lens=on_device(prefix),
            extend_seq_lens=on_device(extend),
            extend_prefix_lens_cpu=prefix,
            extend_seq_lens_cpu=extend,
            out_cache_loc=on_device(slots),
            req_to_token_pool=self.req_pool,
        )
        self.model(on_device(input_ids), on_device(positions), batch)
        for request in requests:
            request.cached = len(request.tokens)
        self._after_forward(requests)

    def _allocate_slots(self, count: int) -> list[int]:
        return [self.free_slots.pop(0) for _ in range(count)]

    def _after_forward(self, requests: list[Request]) -> None:
        """Nothing to release in a full-attention pool."""

    def slot_of(self, request: Request, position: int) -> int:
        return int(self.req_pool.req_to_token[request.row, position])
