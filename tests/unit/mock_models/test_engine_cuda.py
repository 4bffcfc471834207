"""The engine and its canary on a CUDA device: Triton kernels, oracle-equal outputs, detection."""

from __future__ import annotations

import pytest
import torch

from kv_canary import CanaryConfig, CanaryMode, RealKvHashMode
from mock_models.config import EngineConfig
from mock_models.engine.engine import Engine
from mock_models.models.token_oracle import TokenOracle

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

MODES = ["mha", "swa", "dsv4"]


def cuda_engine(mode: str, **settings) -> Engine:
    config = EngineConfig(model_mode=mode, device="cuda", swa_window=16, strict_allocator=True, **settings)
    return Engine(config, canary_config=CanaryConfig(mode=CanaryMode.LOG, real_kv_hash=RealKvHashMode.ALL,
                                                     sweep_interval=4, swa_divergence_interval=8))


@pytest.mark.parametrize("mode", MODES)
def test_pressured_shared_prefix_traffic_on_cuda_matches_the_oracle_with_zero_violations(
        mode, shared_prefix_workload):
    swa = {} if mode == "mha" else {"swa_max_total_tokens": 160}
    engine = cuda_engine(mode, page_size=4, max_total_tokens=320, max_running_requests=4, chunked_prefill_size=32,
                         **swa)
    assert engine.canary.kernels.name == "triton"
    results = engine.generate(shared_prefix_workload.prompts, shared_prefix_workload.max_new_tokens)
    oracle = TokenOracle(seed=0, vocab_size=engine.config.vocab_size)
    for prompt, limit, result in zip(shared_prefix_workload.prompts, shared_prefix_workload.max_new_tokens, results):
        assert list(result.output_ids) == oracle.continuation(prompt, limit)
    engine.canary.flush()
    assert [record.format() for record in engine.canary.violations] == []
    stats = engine.canary.stats_snapshot()
    assert stats["plan_overflow_entries"] == 0 and all(runs > 0 for runs in stats["kernel_runs"].values())


@pytest.mark.parametrize("mode", MODES)
def test_a_corrupted_window_slot_on_cuda_is_reported(mode):
    engine = cuda_engine(mode, max_total_tokens=256)
    engine.submit(list(range(30)), 10)
    engine.step()

    def corrupt_newest_position(engine):
        (request,) = engine.scheduler.running
        slot = engine.req_to_token_pool.req_to_token[request.req_pool_idx, request.kv_len - 1].long()
        pool = engine.token_to_kv_pool
        if mode == "mha":
            pool.k_buffer[0][slot] += 1.0
        else:
            pool.swa_kv_pool.k_buffer[0][pool.full_to_swa_index_mapping[slot]] += 1.0
        remove()

    remove = engine.add_step_hook(corrupt_newest_position)
    engine.run_until_idle()
    engine.canary.flush()
    assert min(r.step for r in engine.canary.violations if "real_kv_hash" in r.fail_reasons) == 2
