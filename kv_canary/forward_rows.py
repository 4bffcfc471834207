"""What the canary needs to know about one forward, read from the engine's forward batch."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import torch

from kv_canary.engine_protocols import ReqToTokenRows
from kv_canary.errors import UnsupportedForwardModeError


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ForwardRows:
    """One forward's batch. A decode batch may be given by ``seq_lens`` alone (each request writes
    one token after ``seq_len - 1`` cached ones), as the SGLang extractor does under graph capture:
    the Triton kernels read them directly, sparing the graph two tensor ops a replay."""

    req_pool_indices: torch.Tensor  # int [B]: each request's row in req_to_token
    prefix_lens: torch.Tensor | None  # int [B]: tokens already cached before this forward
    extend_lens: torch.Tensor | None  # int [B]: tokens this forward writes
    out_cache_loc: torch.Tensor  # int [N]: full-pool slots written, request after request
    input_ids: torch.Tensor  # int [N]
    positions: torch.Tensor  # int [N]
    req_to_token: torch.Tensor  # int [rows, max_context]
    req_token_ids: torch.Tensor | None  # int [rows, max_context]: recorded tokens, -1 where none
    # Host copies the engine already has: they size the plans exactly. None while a graph is
    # captured (then the plans' fixed capacities are used).
    prefix_lens_host: tuple[int, ...] | None = None
    extend_lens_host: tuple[int, ...] | None = None
    # Longest run of new tokens of one request, when known even without the host lists (decode: 1).
    max_extend_len: int | None = None
    seq_lens: torch.Tensor | None = None  # int [B]: a decode batch's lengths

    def __post_init__(self) -> None:
        if (self.prefix_lens is None or self.extend_lens is None) and self.seq_lens is None:
            raise ValueError("ForwardRows needs prefix_lens and extend_lens, or (a decode batch) seq_lens")

    @property
    def is_decode(self) -> bool:
        """Given by ``seq_lens`` alone: one new token per request."""
        return self.prefix_lens is None

    def prefix_len_tensor(self) -> torch.Tensor:
        if self.prefix_lens is not None:
            return self.prefix_lens
        assert self.seq_lens is not None  # __post_init__
        return self.seq_lens - 1

    def extend_len_tensor(self) -> torch.Tensor:
        if self.extend_lens is not None:
            return self.extend_lens
        assert self.seq_lens is not None  # __post_init__
        return torch.ones_like(self.seq_lens)

    @property
    def longest_run(self) -> int | None:
        if self.extend_lens_host is not None:
            return max(self.extend_lens_host, default=0)
        return self.max_extend_len

    @property
    def batch_size(self) -> int:
        return self.req_pool_indices.shape[0]

    @property
    def num_new_tokens(self) -> int:
        return self.out_cache_loc.shape[0]


class ForwardRowsExtractor(Protocol):
    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, capturing: bool) -> ForwardRows: ...


# SGLang's ForwardMode names (the mock engine's too). DECODE and IDLE carry no extend lengths: each
# request writes one token after its ``seq_len - 1`` cached ones. EXTEND and MIXED (chunked prefill
# with decodes folded in) carry them, decodes as runs of length 1.
_DECODE_MODES = frozenset({"DECODE", "IDLE"})
_EXTEND_MODES = frozenset({"EXTEND", "MIXED"})


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SglangForwardRows:
    """Reads ``model.forward(input_ids, positions, forward_batch)`` with SGLang's field names.

    SGLang's ``ForwardBatch`` (0.5.23) has no reference to the request pool, so the extractor
    holds the ``req_to_token_pool`` the canary was installed with. A batch without a
    ``forward_mode`` is read as decode when it has no ``extend_prefix_lens``. The recorded tokens
    are ``req_token_ids`` when given (a table the integration keeps, see
    ``integrations/sglang/token_table.py``), else the pool's own ``req_token_ids`` if it has one.
    """

    req_to_token_pool: ReqToTokenRows
    req_token_ids: torch.Tensor | None = None

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, capturing: bool = False) -> ForwardRows:
        # What the engine passed to model.forward: read by SGLang's names (engine_protocols.ForwardBatchView).
        batch: Any = kwargs.get("forward_batch", args[2] if len(args) > 2 else None)
        if batch is None:
            raise TypeError(
                "kv_canary: the wrapped forward was called without a forward_batch argument; "
                "pass a forward_rows extractor to install_canary for this engine"
            )
        input_ids: Any = kwargs.get("input_ids", args[0] if args else None)
        positions: Any = kwargs.get("positions", args[1] if len(args) > 1 else None)
        decode = _is_decode(batch)
        prefix_lens = extend_lens = None
        if not (decode and capturing):  # a captured decode reads seq_lens: no tensor ops in the graph
            prefix_lens = (batch.seq_lens - 1) if decode else batch.extend_prefix_lens
            extend_lens = torch.ones_like(batch.seq_lens) if decode else batch.extend_seq_lens
        prefix_host = extend_host = None
        if not capturing:
            prefix_host = _host_list(batch, "extend_prefix_lens_cpu")
            extend_host = _host_list(batch, "extend_seq_lens_cpu")
            if decode and getattr(batch, "seq_lens_cpu", None) is not None:
                seq_lens = [int(n) for n in batch.seq_lens_cpu]
                prefix_host, extend_host = tuple(n - 1 for n in seq_lens), tuple(1 for _ in seq_lens)
        pool = self.req_to_token_pool
        return ForwardRows(
            req_pool_indices=batch.req_pool_indices,
            prefix_lens=prefix_lens,
            extend_lens=extend_lens,
            out_cache_loc=batch.out_cache_loc,
            input_ids=input_ids,
            positions=positions,
            req_to_token=pool.req_to_token,
            req_token_ids=self.req_token_ids
            if self.req_token_ids is not None
            else getattr(pool, "req_token_ids", None),
            prefix_lens_host=prefix_host,
            extend_lens_host=extend_host,
            max_extend_len=1 if decode else None,
            seq_lens=batch.seq_lens if decode else None,
        )


def _is_decode(batch: object) -> bool:
    mode = getattr(batch, "forward_mode", None)
    if mode is None:
        return getattr(batch, "extend_prefix_lens", None) is None
    name = getattr(mode, "name", str(mode))
    if name in _DECODE_MODES:
        return True
    if name in _EXTEND_MODES:
        return False
    raise UnsupportedForwardModeError(
        f"kv_canary: forward mode {name} is not supported "
        f"(supported: {', '.join(sorted(_DECODE_MODES | _EXTEND_MODES))}); speculative decoding, dLLM and "
        "split-prefill forwards write KV the canary cannot plan yet, so run the engine without them while the "
        "canary is on"
    )


def _host_list(batch: object, name: str) -> tuple[int, ...] | None:
    values = getattr(batch, name, None)
    return None if values is None else tuple(int(n) for n in values)
