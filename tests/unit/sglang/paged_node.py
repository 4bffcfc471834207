"""One serving node (a prefill or a decode instance) on SGLang 0.5.23's real paged memory, for the
canary's tests of every pool class and of disaggregated transfer.

Real: ``ReqToTokenPool``; the KV pool (``MHATokenToKVPool``, ``MHATokenToKVPoolFP4``, ``SWAKVPool``
or ``DeepSeekV4TokenToKVPool``); its allocator (``PagedTokenToKVPoolAllocator``, or the paged
``SWATokenToKVPoolAllocator``, which also serves DeepSeek-V4), driven through ``alloc_extend`` and
``alloc_decode`` as SGLang's scheduler drives it; ``ForwardBatch``; the MHA and SWA pools' own
``set_kv_buffer``. Stand-ins: the model (``TinyModel``, which writes K/V that depend on token,
position and layer; in dsv4 it writes nothing, since the canary cannot hash DeepSeek-V4's padded
FlashMLA pages and SGLang's latent store needs a GPU kernel) and the model runner.

``DeepSeekV4TokenToKVPool`` reads SGLang's published server config while it builds
(``get_exec()``, ``get_spec()``); SGLang's scheduler process publishes it at start-up
(``runtime_context.publish(server_args, role="scheduler")``). ``published_config`` does the same
for a default ``ServerArgs``, scoped with SGLang's own ``create_context`` / ``use_context`` so that
it leaves the process's context as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import torch
from sglang.srt import runtime_context
from sglang.srt.mem_cache.allocator.paged import PagedTokenToKVPoolAllocator
from sglang.srt.mem_cache.deepseek_v4_memory_pool import DeepSeekV4TokenToKVPool
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPoolFP4
from sglang.srt.server_args import ServerArgs

from kv_canary import CanaryConfig, CanaryManager
from kv_canary.integrations.sglang import install_into_model_runner
from tests.unit.sglang import sglang_imports as sgl
from tests.unit.sglang.sglang_engine import DTYPE, HEADS, FakeModelRunner, SglangEngine, TinyModel

MODES = ("mha", "mha-fp4", "swa", "dsv4")
# 64 bytes of bf16 K (or V) per slot, twice a canary record's 32: a transfer that took one item
# length for the other would move the wrong bytes.
HEAD_DIM = 16
DSV4_PAGE = 256  # SGLang's DeepSeek-V4 pool asserts this page size (kv_cache_configurator)


@functools.cache
def _default_context() -> Any:
    return runtime_context.create_context(ServerArgs(model_path="dummy"), role="test")


@contextlib.contextmanager
def published_config() -> Iterator[None]:
    """SGLang's server config, published for the duration (DeepSeek-V4's pool reads it)."""
    with runtime_context.use_context(_default_context()):
        yield


@dataclasses.dataclass(eq=False)
class Request:
    row: int
    tokens: list[int]  # every token whose K/V is written or about to be
    kv_len: int = 0  # tokens whose K/V has been written


class PagedNode:
    """``mode``: one of MODES. ``size`` and ``swa_size`` are slots, multiples of the page size."""

    def __init__(
        self,
        config: CanaryConfig,
        *,
        mode: str = "mha",
        page_size: int = 4,
        size: int = 128,
        swa_size: int = 64,
        window: int = 8,
        rows: int = 8,
        max_context: int = 128,
    ) -> None:
        self.mode = mode
        self.page_size = DSV4_PAGE if mode == "dsv4" else page_size
        self.req_to_token_pool = sgl.ReqToTokenPool(
            size=rows, max_context_len=max_context, device="cpu", enable_memory_saver=False
        )
        layer_ids = [0, 1, 2]
        if mode in ("mha", "mha-fp4"):
            pool_class = sgl.MHATokenToKVPool if mode == "mha" else MHATokenToKVPoolFP4
            self.pool = pool_class(
                size=size,
                page_size=self.page_size,
                # The FP4 pool stores packed FP4 plus scales; the model's bf16 K/V is quantized on write.
                dtype=DTYPE if mode == "mha" else torch.float4_e2m1fn_x2,
                head_num=HEADS,
                head_dim=HEAD_DIM,
                layer_num=3,
                device="cpu",
                enable_memory_saver=False,
            )
            self.allocator = PagedTokenToKVPoolAllocator(size, self.page_size, DTYPE, "cpu", self.pool, need_sort=False)
            self.window = None
        elif mode == "swa":
            self.pool = sgl.SWAKVPool(
                size=size,
                size_swa=swa_size,
                page_size=self.page_size,
                dtype=DTYPE,
                head_num=HEADS,
                head_dim=HEAD_DIM,
                full_attention_layer_ids=[0],
                swa_attention_layer_ids=[1, 2],
                device="cpu",
            )
            self.allocator = sgl.SWATokenToKVPoolAllocator(
                size, swa_size, self.page_size, DTYPE, "cpu", self.pool, need_sort=False
            )
            self.window = window
        else:
            self.pool = dsv4_pool(size=size, swa_size=swa_size, window=window, rows=rows)
            self.allocator = sgl.SWATokenToKVPoolAllocator(
                size, swa_size, self.page_size, DTYPE, "cpu", self.pool, need_sort=False
            )
            self.window = None  # the runner reads it from the pool (sliding_window)
            layer_ids = []
        self.model = TinyModel(self.pool, layer_ids, head_dim=HEAD_DIM)
        self.model_runner = FakeModelRunner(
            model=self.model,
            token_to_kv_pool=self.pool,
            req_to_token_pool=self.req_to_token_pool,
            token_to_kv_pool_allocator=self.allocator,
            sliding_window_size=self.window,
        )
        self.canary: CanaryManager | None = install_into_model_runner(self.model_runner, config)

    # -- requests ---------------------------------------------------------------------------------

    def admit(self, tokens: list[int]) -> Request:
        (row,) = self.req_to_token_pool.alloc_rows(1)
        return Request(row=row, tokens=list(tokens))

    def allocate(self, requests: list[Request]) -> torch.Tensor:
        """Slots for every request's unwritten tokens, through SGLang's paged allocation."""
        prefix = [r.kv_len for r in requests]
        seq = [len(r.tokens) for r in requests]
        last_loc = [self.slot_of(r, r.kv_len - 1) if r.kv_len else -1 for r in requests]
        if all(s - p == 1 for p, s in zip(prefix, seq, strict=True)) and all(prefix):
            slots = self.allocator.alloc_decode(_ints(seq), torch.tensor(seq), _ints(last_loc))
        else:
            slots = self.allocator.alloc_extend(
                _ints(prefix),
                torch.tensor(prefix),
                _ints(seq),
                torch.tensor(seq),
                _ints(last_loc),
                sum(seq) - sum(prefix),
            )
        if slots is None:
            raise RuntimeError(f"SGLang's allocator is out of pages ({self.allocator.available_size()} slots free)")
        offset = 0
        for request, start, end in zip(requests, prefix, seq, strict=True):
            self.req_to_token_pool.req_to_token[request.row, start:end] = slots[offset : offset + end - start].to(
                torch.int32
            )
            offset += end - start
        return slots

    def forward(self, requests: list[Request], new_tokens: list[list[int]] | None = None) -> None:
        """One forward: each request writes its unwritten tokens, after appending ``new_tokens``."""
        for request, tokens in zip(requests, new_tokens or [[] for _ in requests], strict=True):
            request.tokens += tokens
        prefix = [r.kv_len for r in requests]
        extend = [len(r.tokens) - r.kv_len for r in requests]
        slots = self.allocate(requests)
        batch = SglangEngine.forward_batch(
            decode=all(n == 1 for n in extend) and all(prefix),
            rows=[r.row for r in requests],
            prefix=prefix,
            extend=extend,
            seq_lens=[p + n for p, n in zip(prefix, extend, strict=True)],
            out_cache_loc=slots,
            input_ids=[t for r in requests for t in r.tokens[r.kv_len :]],
            positions=[p for r in requests for p in range(r.kv_len, len(r.tokens))],
        )
        self.model_runner.model.forward(batch.input_ids, batch.positions, batch)
        for request in requests:
            request.kv_len = len(request.tokens)

    # -- helpers ------------------------------------------------------------------------------------

    def slots_of(self, request: Request, end: int | None = None) -> torch.Tensor:
        return self.req_to_token_pool.req_to_token[request.row, : request.kv_len if end is None else end].to(
            torch.int64
        )

    def slot_of(self, request: Request, position: int) -> int:
        return int(self.req_to_token_pool.req_to_token[request.row, position])

    def reported(self) -> list:
        assert self.canary is not None
        self.canary.flush()
        return self.canary.violations


def dsv4_pool(*, size: int, swa_size: int, window: int, rows: int) -> DeepSeekV4TokenToKVPool:
    """A small DeepSeek-V4 pool in SGLang's default (paged SWA, non-unified) layout: layers with
    compress ratios 0 (SWA only), 4 and 128, FP8 latents of DeepSeek-V4's dimensions."""
    with published_config():
        return DeepSeekV4TokenToKVPool(
            max_num_reqs=rows,
            swa_size=swa_size,
            c4_size=size // 4,
            c128_size=size // 128,
            c4_state_pool_size=swa_size,
            c128_state_pool_size=swa_size,
            page_size=DSV4_PAGE,
            swa_page_size=DSV4_PAGE,
            dtype=torch.float8_e4m3fn,
            c4_state_dtype=torch.float32,
            c128_state_dtype=torch.float32,
            qk_nope_head_dim=448,
            qk_rope_head_dim=64,
            indexer_head_dim=128,
            layer_num=3,
            device="cpu",
            enable_memory_saver=False,
            compression_ratios=[0, 4, 128],
            sliding_window=window,
            full_size=size,
        )


def _ints(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)
