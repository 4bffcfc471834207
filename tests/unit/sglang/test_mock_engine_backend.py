"""The mock engine on SGLang 0.5.23's real memory classes (``mem_backend = "sglang"``): clean
traffic under memory pressure stays clean and matches the token oracle."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from kv_canary import CanaryConfig, CanaryMode, KernelBackend, RealKvHashMode
from kv_canary_contract.token_oracle import TokenOracle
from mock_models.config import EngineConfig, EngineConfigError, MemBackend, ModelMode
from mock_models.engine.engine import Engine
from mock_models.server.main import serve_command
from tests.unit.sglang import sglang_imports as sgl

pytestmark = pytest.mark.sglang


def engine(mode: str, **overrides) -> Engine:
    config = EngineConfig(
        model_mode=ModelMode(mode),
        mem_backend=MemBackend.SGLANG,
        max_total_tokens=160,
        swa_window=8,
        max_running_requests=4,
        chunked_prefill_size=32,
        max_context_len=96,
        **overrides,
    )
    canary = CanaryConfig(
        mode=CanaryMode.LOG,
        backend=KernelBackend.TORCH,
        sweep_interval=3,
        real_kv_hash=RealKvHashMode.PARTIAL,
        stats_interval=0,
        health_check_interval=0,
    )
    return Engine(config, canary_config=canary)


def workload(seed: int = 3) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(seed)
    shared = [rng.randrange(1000) for _ in range(32)]
    prompts = [
        shared[: rng.choice([8, 16, 32])] + [rng.randrange(1000) for _ in range(rng.randrange(4, 20))]
        for _ in range(14)
    ]
    return prompts, [rng.randrange(4, 12) for _ in prompts]


@pytest.mark.parametrize("mode", ["mha", "swa"])
def test_clean_traffic_on_sglangs_memory_has_no_violations_and_matches_the_oracle(mode):
    served = engine(mode)
    assert isinstance(served.token_to_kv_pool, sgl.MHATokenToKVPool if mode == "mha" else sgl.SWAKVPool)
    assert isinstance(served.radix_cache.tree, sgl.RadixCache if mode == "mha" else sgl.UnifiedRadixCache)
    evicted = []
    evict = served.radix_cache.evict
    served.radix_cache.evict = lambda n: evicted.append(evict(n)) or evicted[-1]
    prompts, limits = workload()
    results = served.generate(prompts, limits)
    oracle = TokenOracle(seed=0, vocab_size=served.config.vocab_size)
    assert [list(r.output_ids) for r in results] == [
        oracle.continuation(p, n) for p, n in zip(prompts, limits, strict=True)
    ]
    assert sum(r.cached_tokens for r in results) > 0 and sum(evicted) > 0  # prefixes reused, the tree evicted
    served.canary.flush()
    assert served.canary.violations == []
    assert served.canary.stats_snapshot()["kernel_runs"]["SWEEP_K_FULL"] > 0
    # Idle again: every request row is back, and every slot is either free or the tree's.
    assert served.req_to_token_pool.available_size() == served.config.max_running_requests
    tree_size = served.radix_cache.tree.total_size()
    tree_tokens = tree_size[0] if isinstance(tree_size, tuple) else tree_size
    assert served.full_allocator.available_size() + tree_tokens == served.config.max_total_tokens
    if mode == "swa":
        mapped = int((served.swa_allocator.full_to_swa_index_mapping[:-1] > 0).sum())
        assert served.swa_allocator.available_size() + mapped == served.config.swa_pool_size
    assert served.flush_cache() and served.full_allocator.available_size() == served.config.max_total_tokens


def test_sglang_backend_is_refused_where_it_does_not_apply():
    with pytest.raises(EngineConfigError, match="mem_backend = sglang runs model modes mha and swa"):
        EngineConfig(model_mode="dsv4", mem_backend="sglang")


def test_server_command_takes_the_mem_backend_flag():
    result = CliRunner().invoke(serve_command, ["--help"])
    assert "--mem-backend [mock|sglang]" in result.output
    bad = CliRunner().invoke(serve_command, ["--mem-backend", "sglang", "--model-mode", "dsv4", "--port", "0"])
    assert bad.exit_code == 2 and "mem_backend" in bad.output


# -- faults planted in SGLang's structures inside the running engine --------------------------------


def run_with_fault(mode: str, fault, *, at_forward: int = 8, num_prompts: int = 7) -> tuple[list, object]:
    """Serve a shared-prefix workload; before forward ``at_forward``, apply ``fault(engine)`` once.

    Returns the violations and what the fault returned (its target)."""
    served = engine(mode)
    applied: list[object] = []

    def hook(current: Engine) -> None:
        if current.forward_count + 1 == at_forward and not applied and current.scheduler.running:
            applied.append(fault(current))

    served.add_step_hook(hook)
    prompts, _ = workload(seed=5)
    served.generate(prompts[:num_prompts], 8)
    assert applied and applied[0] is not None, "the fault found no target"
    served.canary.flush()
    return served.canary.violations, applied[0]


def longest_running(current: Engine):
    return max(current.scheduler.running, key=lambda req: req.kv_len)


def remap_req_to_token(current: Engine) -> int:
    """Point a running request's second-to-last position at the slot of its position 0."""
    req = longest_running(current)
    rows = current.req_to_token_pool.req_to_token
    rows[req.req_pool_idx, req.kv_len - 2] = rows[req.req_pool_idx, 0]
    return req.kv_len - 2


def double_free_live_slot(current: Engine) -> int:
    req = longest_running(current)
    slot = int(current.req_to_token_pool.req_to_token[req.req_pool_idx, req.kv_len - 1])
    if current.swa_allocator is not None:
        current.swa_allocator.free_swa(torch.tensor([slot]))
    current.full_allocator.free_slots_unchecked([slot])  # SGLang's allocator takes it back, no questions asked
    return slot


def evict_locked_prefix(current: Engine) -> int | None:
    """Drop a running request's tree lock and evict: its cached prefix goes back to the allocator."""
    cache = current.radix_cache
    req = next((r for r in current.scheduler.running if r.tree_owned_len > 0), None)
    if req is None:
        return None
    cache.dec_lock_ref(req.locked_node)
    cache.inc_lock_ref(cache.root_node)  # so the request's own unlock at finish still pairs with a lock
    req.last_node = cache.root_node
    return cache.evict(current.config.max_total_tokens)


def flip_cached_kv_byte(current: Engine) -> int:
    req = longest_running(current)
    slot = int(current.req_to_token_pool.req_to_token[req.req_pool_idx, 1])
    pool: Any = current.token_to_kv_pool  # mha: SGLang's MHA pool; swa: its hybrid pool
    full = pool if isinstance(pool, sgl.MHATokenToKVPool) else pool.full_kv_pool
    full.k_buffer[0][slot].view(torch.uint8).view(-1)[0] ^= 1
    return slot


@pytest.mark.parametrize("mode", ["mha", "swa"])
@pytest.mark.parametrize(
    ("fault", "tags", "reasons", "num_prompts", "at_target_slot"),
    [
        (remap_req_to_token, "HEAD_", {"chain_hash", "position"}, 7, False),
        # SGLang's allocator hands a freed slot out again only after the older free ones: serve longer.
        (double_free_live_slot, "", {"chain_hash", "position", "token"}, 14, True),
        (evict_locked_prefix, "", {"chain_hash", "position", "token"}, 7, False),
        (flip_cached_kv_byte, "", {"real_kv_hash"}, 7, True),
    ],
    ids=["req_to_token_remap", "double_free", "evict_radix_node", "corrupt_kv_bytes"],
)
def test_faults_planted_in_sglangs_structures_are_detected(mode, fault, tags, reasons, num_prompts, at_target_slot):
    violations, target = run_with_fault(mode, fault, num_prompts=num_prompts)
    assert violations, f"{fault.__name__} went unnoticed"
    assert any(v.launch_tag.startswith(tags) and reasons & set(v.fail_reasons) for v in violations)
    if at_target_slot:  # a full-pool slot: the FULL group names it
        assert any(v.slot_idx == target and v.launch_tag.endswith("_FULL") for v in violations)
