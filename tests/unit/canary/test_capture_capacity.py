"""What a captured forward larger than the configured capacities gets: never an out-of-bounds write.

The Triton kernels plan inside their launches: a graph captured for a small forward replays larger
ones whole, every entry verified (GPU). The torch kernels fill fixed plans under capture: entries
past their capacities are dropped, counted, and reported as an error that names the settings (CPU:
a forward without the host's lengths is planned as a captured one is).
"""

from __future__ import annotations

import logging

import pytest
import torch

from kv_canary import CanaryConfig, KernelBackend
from kv_canary.forward_rows import ForwardRows
from kv_canary.launch_tags import KvHalf, Phase, PoolGroupKind
from kv_canary.records import RecordWord
from tests.unit.canary.fake_engine import FakeEngine, ForwardBatch

PROMPT = list(range(100, 140))  # 40 tokens: ten times the capacities below


def small_capacities(backend: KernelBackend) -> CanaryConfig:
    return CanaryConfig(
        backend=backend,
        stats_interval=0,
        health_check_interval=0,
        verify_capacity=4,
        write_capacity=4,
        max_requests_per_forward=1,
    )


def test_torch_plans_drop_count_and_report_what_a_captured_forward_holds_beyond_them(caplog):
    caplog.set_level(logging.INFO, logger="kv_canary")
    engine = FakeEngine(small_capacities(KernelBackend.TORCH))
    request = engine.add_request(PROMPT)
    engine.forward([request])  # eager, with host lengths: the plans grow and the prefill is clean
    engine.canary.flush()
    assert engine.canary.violations == [] and any("plans grown to" in m for m in caplog.messages)
    slot = engine.free_slots.pop(0)
    engine.req_pool.req_to_token[request.row, len(PROMPT)] = slot
    prefix = len(PROMPT)
    rows = ForwardRows(  # a decode without host lengths, as under capture: the plans cannot grow
        req_pool_indices=torch.tensor([request.row]),
        prefix_lens=None,
        extend_lens=None,
        seq_lens=torch.tensor([prefix + 1]),
        out_cache_loc=torch.tensor([slot]),
        input_ids=torch.tensor([7]),
        positions=torch.tensor([prefix]),
        req_to_token=engine.req_pool.req_to_token,
        req_token_ids=None,
        max_extend_len=1,
    )
    for _ in range(2):  # a prefix of 40 over a verify plan of 4 entries (the prefill verified nothing)
        engine.canary.before_forward(rows)
        engine.canary.after_forward()
        engine.canary.after_forward_on_host()
    engine.canary.flush()
    dropped = 2 * (prefix - 4)
    assert engine.canary.stats_snapshot()["plan_overflow_entries"] == dropped
    overflow = [m for m in caplog.messages if m.startswith("kv_canary plan_overflow:")]
    assert sum(int(m.split("dropped_entries=")[1].split()[0]) for m in overflow) == dropped
    assert all("KV_CANARY_VERIFY_CAPACITY" in m for m in overflow)
    assert engine.canary.violations == []  # what was planned verifies clean: nothing written out of bounds


def test_a_captured_decode_batch_wider_than_the_write_plan_is_dropped_counted_and_reported(caplog):
    caplog.set_level(logging.INFO, logger="kv_canary")
    engine = FakeEngine(small_capacities(KernelBackend.TORCH))
    requests = [engine.add_request([10 + i, 20 + i]) for i in range(8)]
    for request in requests:
        engine.forward([request])
    slots = []
    for token, request in enumerate(requests, start=50):
        slots.append(engine.free_slots.pop(0))
        engine.req_pool.req_to_token[request.row, 2] = slots[-1]
        engine.req_pool.req_token_ids[request.row, 2] = token
    rows = ForwardRows(  # 8 decodes without host lengths, as a captured graph replays them
        req_pool_indices=torch.tensor([request.row for request in requests]),
        prefix_lens=None,
        extend_lens=None,
        seq_lens=torch.full((8,), 3),
        out_cache_loc=torch.tensor(slots),
        input_ids=torch.arange(50, 58),
        positions=torch.full((8,), 2),
        req_to_token=engine.req_pool.req_to_token,
        req_token_ids=engine.req_pool.req_token_ids,
        max_extend_len=1,
    )
    engine.canary.before_forward(rows)
    engine.canary.after_forward()
    engine.canary.after_forward_on_host()
    engine.forward([])
    engine.canary.flush()
    # verify: 16 prefix entries over 4; write: 8 new tokens over 4, and of those 4 only the first
    # request's run fits a request capacity of 1.
    dropped = (16 - 4) + (8 - 4) + 3
    assert engine.canary.stats_snapshot()["plan_overflow_entries"] == dropped
    overflow = [m for m in caplog.messages if m.startswith("kv_canary plan_overflow:")]
    assert overflow and f"dropped_entries={dropped}" in overflow[0]
    assert "KV_CANARY_WRITE_CAPACITY" in overflow[0] and "KV_CANARY_MAX_REQUESTS_PER_FORWARD" in overflow[0]
    assert engine.canary.violations == []  # the planned part verifies clean: nothing written out of bounds


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_graph_captured_by_the_triton_kernels_verifies_a_longer_prefix_whole():
    torch.set_default_device("cuda")
    try:
        engine = FakeEngine(small_capacities(KernelBackend.TRITON))
        request = engine.add_request(PROMPT[:2])
        engine.forward([request])
        static = {name: torch.zeros(1, dtype=torch.int64) for name in ("input_ids", "positions", "loc", "seq_lens")}
        batch = ForwardBatch(
            req_pool_indices=torch.tensor([request.row]),
            seq_lens=static["seq_lens"],
            extend_prefix_lens=torch.zeros(1, dtype=torch.int64),
            extend_seq_lens=torch.ones(1, dtype=torch.int64),
            extend_prefix_lens_cpu=None,
            extend_seq_lens_cpu=None,
            out_cache_loc=static["loc"],
            req_to_token_pool=engine.req_pool,
        )

        def prepare(token: int) -> None:
            position = len(request.tokens)
            slot = engine.free_slots.pop(0)
            engine.req_pool.req_to_token[request.row, position] = slot
            engine.req_pool.req_token_ids[request.row, position] = token
            request.tokens.append(token)
            static["input_ids"].fill_(token)
            static["positions"].fill_(position)
            static["loc"].fill_(slot)
            static["seq_lens"].fill_(position + 1)
            batch.extend_prefix_lens.fill_(position)

        prepare(300)
        engine.model(static["input_ids"], static["positions"], batch)  # eager: compiles outside the capture
        request.cached = len(request.tokens)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        prepare(301)
        with torch.cuda.graph(graph):
            engine.model(static["input_ids"], static["positions"], batch)
        for step in range(40):  # the prefix grows far past verify_capacity=4
            if step:
                prepare(302 + step)
            graph.replay()
            request.cached = len(request.tokens)
            engine.canary.after_forward_on_host()
        engine.canary.flush()
        assert engine.canary.violations == []
        before = engine.canary.stats_snapshot()["slots_verified"]["HEAD_K_FULL"]
        victim = engine.slot_of(request, 1)
        engine.canary.group(PoolGroupKind.FULL).records(Phase.HEAD, KvHalf.K)[victim, RecordWord.POSITION] += 1
        prepare(400)
        prefix = len(request.tokens) - 1
        graph.replay()
        engine.canary.after_forward_on_host()
        engine.canary.flush()
        snapshot = engine.canary.stats_snapshot()
        assert snapshot["slots_verified"]["HEAD_K_FULL"] - before == prefix  # every entry, none cut at 4
        assert snapshot["plan_overflow_entries"] == 0
        assert ("HEAD_K_FULL", victim, ("position",)) in {
            (v.launch_tag, v.slot_idx, v.fail_reasons) for v in engine.canary.violations
        }
    finally:
        torch.set_default_device("cpu")
