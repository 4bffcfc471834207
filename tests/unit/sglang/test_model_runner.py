"""install_into_model_runner on a stand-in runner (a real ModelRunner needs a GPU and weights)
holding SGLang 0.5.23's real pools, allocator and radix cache."""

from __future__ import annotations

import pytest
import torch

from kv_canary import CanaryConfig, CanaryMode, KernelBackend
from kv_canary.integrations.sglang import KvCanaryInstallError, SglangTreeCache, install_into_model_runner
from tests.unit.sglang import sglang_imports as sgl
from tests.unit.sglang.sglang_engine import SglangEngine

pytestmark = pytest.mark.sglang

OFF = CanaryConfig(mode=CanaryMode.NONE)
ON = CanaryConfig(
    backend=KernelBackend.TORCH,
    stats_interval=0,
    health_check_interval=0,
    verify_capacity=256,
    write_capacity=128,
    max_requests_per_forward=4,
)


def runner(mode="mha", tree=None):
    """A stand-in runner whose canary is not installed yet."""
    return SglangEngine(OFF, mode=mode, tree=tree).model_runner


def test_install_wraps_the_forward_and_reads_the_runners_pools():
    model_runner = runner()
    manager = install_into_model_runner(model_runner, ON)
    assert manager.req_to_token_pool is model_runner.req_to_token_pool
    assert manager.groups[0].num_slots == model_runner.token_to_kv_pool.k_buffer[0].shape[0]
    assert "forward" in vars(model_runner.model) and model_runner.model.forward.__wrapped__ is not None


def test_config_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("KV_CANARY_MODE", "none")
    assert install_into_model_runner(runner()) is None
    monkeypatch.setenv("KV_CANARY_MODE", "log")
    monkeypatch.setenv("KV_CANARY_SWEEP_INTERVAL", "5")
    assert install_into_model_runner(runner()).config.sweep_interval == 5


def test_swa_runner_uses_its_sliding_window_size():
    manager = install_into_model_runner(runner(mode="swa"), ON)
    _full, swa = manager.groups
    assert swa.window == 4 and swa.full_to_swa_index_mapping is not None


def test_tree_cache_is_attached_for_the_sweep():
    model_runner = runner()
    tree = sgl.RadixCache(
        sgl.CacheInitParams(
            disable=False,
            req_to_token_pool=model_runner.req_to_token_pool,
            token_to_kv_pool_allocator=model_runner.token_to_kv_pool_allocator,
            page_size=1,
        )
    )
    manager = install_into_model_runner(model_runner, ON.replace(sweep_interval=2), tree_cache=tree)
    assert isinstance(manager.prefix_cache, SglangTreeCache) and manager.prefix_cache.tree_cache is tree


def test_captured_cuda_graphs_refuse_the_install():
    model_runner = runner()
    model_runner.decode_cuda_graph_runner = object()
    with pytest.raises(KvCanaryInstallError, match=r"captured CUDA graphs.*before ModelRunner\.init_cuda_graphs"):
        install_into_model_runner(model_runner, ON)


def test_runner_without_pools_is_refused():
    model_runner = runner()
    model_runner.token_to_kv_pool = None
    with pytest.raises(KvCanaryInstallError, match=r"token_to_kv_pool is not set.*init_memory_pool"):
        install_into_model_runner(model_runner, ON)


def test_pool_mapping_that_is_not_the_allocators_is_refused():
    model_runner = runner(mode="swa")
    model_runner.token_to_kv_pool.register_mapping(torch.zeros(98, dtype=torch.int64))
    with pytest.raises(KvCanaryInstallError, match="not the tensor SWATokenToKVPoolAllocator maintains"):
        install_into_model_runner(model_runner, ON)
