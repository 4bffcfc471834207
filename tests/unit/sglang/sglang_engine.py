"""A small serving loop over SGLang 0.5.23's real memory classes, for the canary's tests.

Real: ``ReqToTokenPool``, the KV pool (``MHATokenToKVPool`` or ``SWAKVPool``), its allocator
(``TokenToKVPoolAllocator`` or ``SWATokenToKVPoolAllocator``), the radix cache (``RadixCache``
or ``UnifiedRadixCache`` on either tree core), ``ForwardBatch`` and the pools' own
``set_kv_buffer``. Stand-ins, because a real ``ModelRunner`` needs a GPU and model weights: the
model (writes K/V that depend on token, position and layer) and the runner object, which only
exposes the attributes ``install_into_model_runner`` reads. The scheduling follows SGLang's
steps: match the prefix and lock its node, allocate the new slots, write ``req_to_token``, run
the forward, and on finish insert into the tree, free the duplicates and unlock.
"""

from __future__ import annotations

import dataclasses
import types
from array import array
from typing import Any

import torch

from kv_canary import CanaryConfig, CanaryManager
from kv_canary.integrations.sglang import install_into_model_runner
from tests.unit.sglang import sglang_imports as sgl

HEADS, HEAD_DIM = 2, 8
DTYPE = torch.bfloat16
TREE_KINDS = ("radix", "unified-python", "unified-rust")


class TinyModel(torch.nn.Module):
    def __init__(self, pool: Any, layer_ids: list[int], *, head_dim: int = HEAD_DIM) -> None:
        super().__init__()
        self.pool = pool
        self.layer_ids = layer_ids
        self.head_dim = head_dim

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: Any) -> None:
        base = (input_ids * 31 + positions).to(torch.float32)[:, None, None]
        pattern = torch.arange(HEADS * self.head_dim, dtype=torch.float32).view(HEADS, self.head_dim) / 64
        loc = forward_batch.out_cache_loc
        if isinstance(self.pool, sgl.SWAKVPool):
            loc = sgl.KVWriteLoc(loc, swa_loc=self.pool.translate_loc_from_full_to_swa(loc))
        for layer_id in self.layer_ids:
            k = (base + pattern + layer_id).to(DTYPE)
            v = (-base - layer_id).expand(-1, HEADS, self.head_dim).to(DTYPE)
            self.pool.set_kv_buffer(types.SimpleNamespace(layer_id=layer_id), loc, k, v)


class FakeModelRunner:
    """What ``install_into_model_runner`` reads from SGLang's ``ModelRunner``, and nothing more."""

    decode_cuda_graph_runner = None
    prefill_cuda_graph_runner = None
    eager_runner = None

    def __init__(
        self, *, model, token_to_kv_pool, req_to_token_pool, token_to_kv_pool_allocator, sliding_window_size
    ) -> None:
        self.model = model
        self.token_to_kv_pool = token_to_kv_pool
        self.req_to_token_pool = req_to_token_pool
        self.token_to_kv_pool_allocator = token_to_kv_pool_allocator
        self.sliding_window_size = sliding_window_size
        self.device = "cpu"


@dataclasses.dataclass(eq=False)
class Request:
    row: int
    tokens: list[int]  # every token whose K/V is written or about to be
    kv_len: int = 0  # tokens whose K/V has been written
    tree_len: int = 0  # leading tokens whose slots the radix cache owns
    swa_released: int = 0  # leading tokens whose SWA rows are freed (SWA pools)
    lock: Any = None  # the TreeLock this request holds on its prefix's last node


class SglangEngine:
    """``mode``: "mha" or "swa"; ``tree``: one of TREE_KINDS, or None for no radix cache."""

    def __init__(
        self,
        config: CanaryConfig,
        *,
        mode: str = "mha",
        tree: str | None = "radix",
        size: int = 96,
        swa_size: int = 48,
        window: int = 4,
        rows: int = 8,
        max_context: int = 96,
    ) -> None:
        self.mode = mode
        self.window = window if mode == "swa" else None
        self.req_to_token_pool = sgl.ReqToTokenPool(
            size=rows, max_context_len=max_context, device="cpu", enable_memory_saver=False
        )
        if mode == "mha":
            self.pool = sgl.MHATokenToKVPool(
                size=size,
                page_size=1,
                dtype=DTYPE,
                head_num=HEADS,
                head_dim=HEAD_DIM,
                layer_num=2,
                device="cpu",
                enable_memory_saver=False,
            )
            self.allocator = sgl.TokenToKVPoolAllocator(size, DTYPE, "cpu", self.pool, need_sort=False)
            layer_ids = [0, 1]
        else:
            self.pool = sgl.SWAKVPool(
                size=size,
                size_swa=swa_size,
                page_size=1,
                dtype=DTYPE,
                head_num=HEADS,
                head_dim=HEAD_DIM,
                full_attention_layer_ids=[0],
                swa_attention_layer_ids=[1, 2],
                device="cpu",
            )
            self.allocator = sgl.SWATokenToKVPoolAllocator(size, swa_size, 1, DTYPE, "cpu", self.pool, need_sort=False)
            layer_ids = [0, 1, 2]
        self.tree_cache = None if tree is None else self._build_tree(tree)
        self.model = TinyModel(self.pool, layer_ids)
        self.model_runner = FakeModelRunner(
            model=self.model,
            token_to_kv_pool=self.pool,
            req_to_token_pool=self.req_to_token_pool,
            token_to_kv_pool_allocator=self.allocator,
            sliding_window_size=self.window,
        )
        self.canary: CanaryManager | None = install_into_model_runner(
            self.model_runner, config, tree_cache=self.tree_cache
        )

    def _build_tree(self, kind: str) -> Any:
        params = sgl.CacheInitParams(
            disable=False,
            req_to_token_pool=self.req_to_token_pool,
            token_to_kv_pool_allocator=self.allocator,
            page_size=1,
            sliding_window_size=self.window,
        )
        if kind == "radix":
            if self.mode != "mha":
                raise ValueError("RadixCache has no SWA tier; use a unified tree for swa")
            return sgl.RadixCache(params)
        components = [sgl.ComponentType.FULL] + ([sgl.ComponentType.SWA] if self.mode == "swa" else [])
        params.tree_components = tuple(components)
        params.tree_core_backend = kind.removeprefix("unified-")
        return sgl.UnifiedRadixCache(params)

    # -- requests ---------------------------------------------------------------------------------

    def add_request(self, tokens: list[int]) -> Request:
        """Admit a request: reuse (and lock) the cached prefix of all but its last token."""
        (row,) = self.req_to_token_pool.alloc_rows(1)
        request = Request(row=row, tokens=list(tokens))
        if self.tree_cache is not None:
            match = self.tree_cache.match_prefix(self.match_params(tokens[:-1]))
            prefix = self.tree_cache.path_device_indices(match.last_device_node)
            request.lock = self.tree_cache.lock(match.last_device_node)
            self.req_to_token_pool.req_to_token[row, : len(prefix)] = prefix.to(torch.int32)
            request.kv_len = request.tree_len = len(prefix)
        return request

    def forward(self, requests: list[Request], new_tokens: list[list[int]] | None = None) -> None:
        """One forward: each request writes its unwritten tokens, after appending ``new_tokens``."""
        for request, tokens in zip(requests, new_tokens or [[] for _ in requests], strict=True):
            request.tokens += tokens
        prefix = [r.kv_len for r in requests]
        extend = [len(r.tokens) - r.kv_len for r in requests]
        slots = self.allocator.alloc(sum(extend))
        if slots is None:
            raise RuntimeError(f"the real allocator has {self.allocator.available_size()} slots, {sum(extend)} asked")
        input_ids: list[int] = []
        positions: list[int] = []
        offset = 0
        for request, start, count in zip(requests, prefix, extend, strict=True):
            self.req_to_token_pool.req_to_token[request.row, start : start + count] = slots[offset : offset + count].to(
                torch.int32
            )
            offset += count
            input_ids += request.tokens[start : start + count]
            positions += range(start, start + count)
        seq_lens = [p + n for p, n in zip(prefix, extend, strict=True)]
        decode = all(n == 1 for n in extend) and all(p > 0 for p in prefix)
        batch = self.forward_batch(
            decode=decode,
            rows=[r.row for r in requests],
            prefix=prefix,
            extend=extend,
            seq_lens=seq_lens,
            out_cache_loc=slots,
            input_ids=input_ids,
            positions=positions,
        )
        self.model_runner.model.forward(batch.input_ids, batch.positions, batch)
        for request in requests:
            request.kv_len = len(request.tokens)
        if self.window is not None:
            self._release_out_of_window(requests)

    @staticmethod
    def forward_batch(
        *,
        decode: bool,
        rows: list[int],
        prefix: list[int],
        extend: list[int],
        seq_lens: list[int],
        out_cache_loc: torch.Tensor,
        input_ids: list[int],
        positions: list[int],
    ) -> Any:
        def tensor(values: list[int], dtype: torch.dtype = torch.int64) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype)

        fields = {
            "batch_size": len(rows),
            "input_ids": tensor(input_ids),
            "req_pool_indices": tensor(rows),
            "seq_lens": tensor(seq_lens),
            "out_cache_loc": out_cache_loc.to(torch.int64),
            "seq_lens_sum": sum(seq_lens),
            "positions": tensor(positions),
            "seq_lens_cpu": tensor(seq_lens),
        }
        if decode:
            return sgl.ForwardBatch(forward_mode=sgl.ForwardMode.DECODE, **fields)
        return sgl.ForwardBatch(
            forward_mode=sgl.ForwardMode.EXTEND,
            extend_prefix_lens=tensor(prefix, torch.int32),
            extend_seq_lens=tensor(extend, torch.int32),
            extend_prefix_lens_cpu=list(prefix),
            extend_seq_lens_cpu=list(extend),
            extend_num_tokens=sum(extend),
            **fields,
        )

    def _release_out_of_window(self, requests: list[Request]) -> None:
        """Free the SWA rows of private positions the next forward's window no longer reads."""
        assert self.window is not None  # only called with a sliding window
        for request in requests:
            start = max(request.tree_len, request.swa_released)
            end = len(request.tokens) - self.window
            if end > start:
                self.allocator.free_swa(self.slots_of(request)[start:end].to(torch.int64))
                request.swa_released = end

    def finish(self, request: Request) -> None:
        """Cache the request's tokens in the tree (or free them), unlock, release its row."""
        slots = self.slots_of(request)[: request.kv_len].to(torch.int64)
        if self.tree_cache is None:
            self._free_private(request, slots, request.tree_len, request.kv_len)
        else:
            evicted = {sgl.ComponentType.SWA: request.swa_released} if self.window is not None else {}
            result = self.tree_cache.insert(
                sgl.InsertParams(
                    key=self._key(request.tokens[: request.kv_len]),
                    value=slots.clone(),
                    component_evicted_seqlens=evicted,
                )
            )
            # Another request cached these tokens first: the tree keeps its slots, these are duplicates.
            self._free_private(request, slots, request.tree_len, result.prefix_len)
            self.tree_cache.unlock(request.lock)
        self.req_to_token_pool.free_rows([request.row])

    def _free_private(self, request: Request, slots: torch.Tensor, start: int, end: int) -> None:
        if self.window is None:
            self.allocator.free(slots[start:end])
            return
        released = min(max(request.swa_released, start), end)
        self.allocator.free_full(slots[start:released])  # their SWA rows are freed already
        self.allocator.free(slots[released:end])

    # -- helpers ------------------------------------------------------------------------------------

    @staticmethod
    def _key(tokens: list[int]) -> Any:
        return sgl.RadixKey(array("q", tokens))

    def match_params(self, tokens: list[int]) -> Any:
        return sgl.MatchPrefixParams(key=self._key(tokens))

    @staticmethod
    def evict_params(*, num_tokens: int) -> Any:
        return sgl.EvictParams(num_tokens=num_tokens)

    def slots_of(self, request: Request) -> torch.Tensor:
        return self.req_to_token_pool.req_to_token[request.row, : len(request.tokens)]

    def slot_of(self, request: Request, position: int) -> int:
        return int(self.req_to_token_pool.req_to_token[request.row, position])

    def reported(self) -> list:
        self.canary.flush()
        return self.canary.violations
