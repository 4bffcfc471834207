"""SGLang's ``ReqToTokenPool`` rows, plus the recorded-token table SGLang does not keep."""

from __future__ import annotations

import torch
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool

from mock_models.engine.req_to_token_pool import NO_TOKEN


class SglangReqToTokenPool:
    """The engine's ``RequestRows`` on SGLang's pool: its ``req_to_token`` is the one SGLang keeps."""

    def __init__(self, sglang_pool: ReqToTokenPool) -> None:
        self.sglang_pool = sglang_pool
        self.size: int = sglang_pool.size
        self.max_context_len: int = sglang_pool.max_context_len
        self.device = torch.device(sglang_pool.device)
        self.req_to_token: torch.Tensor = sglang_pool.req_to_token
        self.req_token_ids = torch.full(self.req_to_token.shape, NO_TOKEN, dtype=torch.int64, device=self.device)

    def available_size(self) -> int:
        return int(self.sglang_pool.available_size())

    def alloc(self) -> int:
        rows = self.sglang_pool.alloc_rows(1)
        if rows is None:
            raise RuntimeError(
                f"ReqToTokenPool: all {self.size} request rows are in use; "
                "the scheduler admits at most max_running_requests"
            )
        self.req_token_ids[rows[0]].fill_(NO_TOKEN)
        return int(rows[0])

    def free(self, row: int) -> None:
        self.sglang_pool.free_rows([row])

    def write_slots(self, rows: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor) -> None:
        self.req_to_token[rows, positions] = slots.to(torch.int32)

    def write_tokens(self, rows: torch.Tensor, positions: torch.Tensor, tokens: torch.Tensor) -> None:
        self.req_token_ids[rows, positions] = tokens.to(torch.int64)
