"""The forward-rows extractor on SGLang 0.5.23's real ForwardBatch."""

from __future__ import annotations

import pytest
import torch

from kv_canary import UnsupportedForwardModeError
from kv_canary.forward_rows import SglangForwardRows
from tests.unit.sglang import sglang_imports as sgl
from tests.unit.sglang.sglang_engine import SglangEngine

pytestmark = pytest.mark.sglang


@pytest.fixture
def extractor() -> SglangForwardRows:
    pool = sgl.ReqToTokenPool(size=4, max_context_len=16, device="cpu", enable_memory_saver=False)
    return SglangForwardRows(req_to_token_pool=pool)


def read(extractor, batch, *, capturing=False):
    return extractor((batch.input_ids, batch.positions, batch), {}, capturing=capturing)


def test_extend_batch_reads_prefix_and_extend_lengths_and_their_host_copies(extractor):
    batch = SglangEngine.forward_batch(
        decode=False,
        rows=[1, 2],
        prefix=[0, 3],
        extend=[4, 2],
        seq_lens=[4, 5],
        out_cache_loc=torch.arange(1, 7),
        input_ids=[5, 6, 7, 8, 9, 10],
        positions=[0, 1, 2, 3, 3, 4],
    )
    assert not hasattr(batch, "req_to_token_pool")  # 0.5.23's ForwardBatch has no pool reference
    rows = read(extractor, batch)
    assert rows.prefix_lens.tolist() == [0, 3] and rows.extend_lens.tolist() == [4, 2]
    assert (rows.prefix_lens_host, rows.extend_lens_host, rows.longest_run) == ((0, 3), (4, 2), 4)
    assert rows.req_to_token is extractor.req_to_token_pool.req_to_token
    assert rows.req_token_ids is None  # SGLang records no tokens: the token checks stay off
    assert rows.out_cache_loc.tolist() == [1, 2, 3, 4, 5, 6]


def test_decode_batch_writes_one_token_after_seq_len_minus_one(extractor):
    batch = SglangEngine.forward_batch(
        decode=True,
        rows=[1, 2],
        prefix=[4, 7],
        extend=[1, 1],
        seq_lens=[5, 8],
        out_cache_loc=torch.tensor([9, 10]),
        input_ids=[1, 2],
        positions=[4, 7],
    )
    assert batch.extend_prefix_lens is None
    rows = read(extractor, batch)
    assert (rows.prefix_lens.tolist(), rows.extend_lens.tolist()) == ([4, 7], [1, 1])
    assert (rows.prefix_lens_host, rows.extend_lens_host, rows.longest_run) == ((4, 7), (1, 1), 1)
    captured = read(extractor, batch, capturing=True)
    assert (captured.prefix_lens_host, captured.longest_run) == (None, 1)


def test_idle_batch_plans_nothing(extractor):
    empty = torch.zeros(0, dtype=torch.int64)
    batch = sgl.ForwardBatch(
        forward_mode=sgl.ForwardMode.IDLE,
        batch_size=0,
        input_ids=empty,
        req_pool_indices=empty,
        seq_lens=empty,
        out_cache_loc=empty,
        seq_lens_sum=0,
        positions=empty,
        seq_lens_cpu=empty,
    )
    rows = read(extractor, batch)
    assert (rows.batch_size, rows.num_new_tokens, rows.prefix_lens_host) == (0, 0, ())


@pytest.mark.parametrize("mode", ["TARGET_VERIFY", "DRAFT_EXTEND_V2", "SPLIT_PREFILL", "DLLM_EXTEND"])
def test_speculative_and_other_unplanned_modes_are_refused_by_name(extractor, mode):
    batch = SglangEngine.forward_batch(
        decode=True,
        rows=[1],
        prefix=[4],
        extend=[1],
        seq_lens=[5],
        out_cache_loc=torch.tensor([9]),
        input_ids=[1],
        positions=[4],
    )
    batch.forward_mode = getattr(sgl.ForwardMode, mode)
    with pytest.raises(UnsupportedForwardModeError, match=f"forward mode {mode} is not supported"):
        read(extractor, batch)
