"""Per-request rows mapping each position to its full-pool slot, and the token recorded there."""

from __future__ import annotations

import torch

PADDING_ROW = 0  # never handed out; padded batch entries point here
NO_TOKEN = -1


class ReqToTokenPool:
    """``req_to_token[row, position]`` is the full-pool slot holding that position's K/V.

    ``req_token_ids[row, position]`` is the token the engine recorded there: the prompt at
    admission, each sampled token before the forward that feeds it. The model is fed from the
    request's own token list instead, so the canary can tell "fed" from "recorded".
    """

    def __init__(self, *, size: int, max_context_len: int, device: torch.device | str) -> None:
        self.size = size  # usable rows; row 0 is padding on top of these
        self.max_context_len = max_context_len
        self.device = torch.device(device)
        self.req_to_token = torch.zeros(size + 1, max_context_len, dtype=torch.int32, device=self.device)
        self.req_token_ids = torch.full((size + 1, max_context_len), NO_TOKEN, dtype=torch.int64, device=self.device)
        self.free_rows = list(range(1, size + 1))

    def available_size(self) -> int:
        return len(self.free_rows)

    def alloc(self) -> int:
        if not self.free_rows:
            raise RuntimeError(
                f"ReqToTokenPool: all {self.size} request rows are in use; "
                "the scheduler admits at most max_running_requests"
            )
        row = self.free_rows.pop(0)
        self.req_token_ids[row].fill_(NO_TOKEN)
        return row

    def free(self, row: int) -> None:
        if row == PADDING_ROW or row in self.free_rows:
            raise RuntimeError(f"ReqToTokenPool: row {row} freed twice (or the padding row)")
        self.free_rows.append(row)

    def write_slots(self, rows: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor) -> None:
        self.req_to_token[rows, positions] = slots.to(torch.int32)

    def write_tokens(self, rows: torch.Tensor, positions: torch.Tensor, tokens: torch.Tensor) -> None:
        self.req_token_ids[rows, positions] = tokens.to(torch.int64)
