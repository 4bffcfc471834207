"""On a CUDA device: the pre/post-ops (verify-plan hook included) replay from a captured graph,
and the sweep and the observers run with pinned, one-step-late transfers.

Marked ``gpu`` (excluded from the default run): ``pytest -m gpu tests/unit/canary/test_cuda.py``.
"""

from __future__ import annotations

import logging

import pytest
import torch

from kv_canary import CanaryConfig, CanaryStatsLog, KernelBackend, SwaDivergenceLog
from kv_canary.launch_tags import KvHalf, Phase, PoolGroupKind
from kv_canary.records import RecordWord
from tests.unit.canary.fake_engine import ForwardBatch, Request
from tests.unit.canary.fake_swa_engine import FakeSwaEngine
from tests.unit.canary.test_sweep import cache_with_an_idle_prefix, keep_decoding, make_engine

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def on_cuda(caplog):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    caplog.set_level(logging.INFO, logger="kv_canary")
    torch.set_default_device("cuda")  # the fakes allocate with torch defaults
    yield
    torch.set_default_device("cpu")


class StaticDecode:
    """A one-request decode batch whose tensors are refilled in place, as graph replay needs."""

    def __init__(self, engine: FakeSwaEngine, request: Request) -> None:
        self.engine, self.request = engine, request
        self.input_ids, self.positions = torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)
        self.batch = ForwardBatch(
            req_pool_indices=torch.tensor([request.row]),
            seq_lens=torch.zeros(1, dtype=torch.int64),
            extend_prefix_lens=torch.zeros(1, dtype=torch.int64),
            extend_seq_lens=torch.ones(1, dtype=torch.int64),
            extend_prefix_lens_cpu=None,
            extend_seq_lens_cpu=None,  # as under capture: no host lengths
            out_cache_loc=torch.zeros(1, dtype=torch.int64),
            req_to_token_pool=engine.req_pool,
        )

    def prepare(self, token: int) -> None:
        engine, request = self.engine, self.request
        position = len(request.tokens)
        (slot,) = engine._allocate_slots(1)
        engine.req_pool.req_to_token[request.row, position] = slot
        engine.req_pool.req_token_ids[request.row, position] = token
        request.tokens.append(token)
        self.input_ids.fill_(token)
        self.positions.fill_(position)
        self.batch.seq_lens.fill_(position + 1)
        self.batch.extend_prefix_lens.fill_(position)
        self.batch.out_cache_loc.fill_(slot)

    def run_eagerly(self) -> None:
        self.engine.model(self.input_ids, self.positions, self.batch)
        self.finish(on_host=False)  # the wrapper ran the host-side observers itself

    def finish(self, *, on_host: bool = True) -> None:
        self.request.cached = len(self.request.tokens)
        self.engine._after_forward([self.request])
        if on_host:  # after a replay the engine runs the host-side observers
            self.engine.canary.after_forward_on_host()


def test_pre_and_post_ops_with_the_verify_plan_hook_replay_from_a_cuda_graph(caplog):
    config = CanaryConfig(
        backend=KernelBackend.TRITON,
        swa_divergence_interval=1,
        stats_interval=1,
        health_check_interval=1,
        health_check_warmup=1,
        verify_capacity=256,
        write_capacity=16,
        max_requests_per_forward=4,
    )
    engine = FakeSwaEngine(config, window=4, num_swa_slots=12)
    request = engine.add_request([1, 2, 3, 4, 5, 6])
    engine.forward([request])
    decode = StaticDecode(engine, request)
    decode.prepare(100)
    decode.run_eagerly()  # compiles every kernel variant outside the capture
    torch.cuda.synchronize()

    graph = torch.cuda.CUDAGraph()
    decode.prepare(101)
    with torch.cuda.graph(graph):
        engine.model(decode.input_ids, decode.positions, decode.batch)
    for step in range(12):  # past the window: SWA slots are freed and reused between replays
        if step:
            decode.prepare(101 + step)
        graph.replay()
        decode.finish()
    engine.canary.flush()
    assert engine.canary.violations == []
    assert engine.swa_slots_handed_out > 12
    line = SwaDivergenceLog.find_last(caplog.text)
    assert line.forward_ct == 2 + 12 and 0 < line.verify_swa < line.verify_full
    assert CanaryStatsLog.find_last(caplog.text).launch_tags_active == 8

    victim = engine.swa_slot_of(request, len(request.tokens) - 2)
    engine.canary.group(PoolGroupKind.SWA).records(Phase.HEAD, KvHalf.K)[victim, RecordWord.POSITION] += 1
    decode.prepare(200)
    graph.replay()
    decode.finish()
    engine.canary.flush()
    assert ("HEAD_K_SWA", victim, ("position",)) in {
        (v.launch_tag, v.slot_idx, v.fail_reasons) for v in engine.canary.violations
    }


def test_the_sweep_catches_an_idle_cached_slot_with_triton_kernels_on_cuda():
    engine = make_engine(KernelBackend.TRITON)
    _, done, running = cache_with_an_idle_prefix(engine)
    victim = engine.slot_of(done, 7)
    engine.canary.group(PoolGroupKind.FULL).records(Phase.TAIL, KvHalf.V)[victim, RecordWord.TOKEN] += 1
    keep_decoding(engine, running, 2)
    engine.canary.flush()
    assert {(v.launch_tag, v.slot_idx, v.fail_reasons) for v in engine.canary.violations} == {
        ("SWEEP_V_FULL", victim, ("token",)),
        ("SWEEP_V_FULL", engine.slot_of(done, 8), ("chain_hash",)),
    }
