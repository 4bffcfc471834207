"""The mock engine on SGLang's paged memory (``mem_backend = "sglang"``, ``page_size`` > 1):
``PagedTokenToKVPoolAllocator`` / the paged ``SWATokenToKVPoolAllocator`` driven through
``alloc_extend`` and ``alloc_decode``, page-granular ``RadixCache`` / ``UnifiedRadixCache``. Clean
traffic stays clean, matches the token oracle and leaks no page; it behaves as the engine's own
paged memory does; faults on pages are caught.

The default run takes page size 16 (``test_mock_engine_backend.py`` covers 1); ``-m slow`` adds
the whole matrix, 1 to 64, in both modes.
"""

from __future__ import annotations

import random

import pytest
import torch

from kv_canary import CanaryConfig, CanaryMode, KernelBackend, RealKvHashMode
from kv_canary_contract.token_oracle import TokenOracle
from mock_models.config import EngineConfig, MemBackend, ModelMode
from mock_models.engine.engine import Engine

pytestmark = pytest.mark.sglang

MODES = ("mha", "swa")
SLOW_PAGE_SIZES = (1, 2, 4, 8, 32, 64)
PAGE_SIZES = [16, *(pytest.param(page, marks=pytest.mark.slow) for page in SLOW_PAGE_SIZES)]


def engine(mode: str, page_size: int, backend: str = "sglang") -> Engine:
    config = EngineConfig(
        model_mode=ModelMode(mode),
        mem_backend=MemBackend(backend),
        page_size=page_size,
        max_total_tokens=max(160, 12 * page_size) // page_size * page_size,  # tight: the tree evicts
        swa_window=8,
        max_running_requests=4,
        chunked_prefill_size=32,
        max_context_len=128,
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
    shared = [rng.randrange(1000) for _ in range(64)]
    prompts = [
        shared[: rng.choice([8, 16, 32, 64])] + [rng.randrange(1000) for _ in range(rng.randrange(4, 20))]
        for _ in range(14)
    ]
    return prompts, [rng.randrange(4, 12) for _ in prompts]


def check_paging(served: Engine) -> None:
    """Every running request's slots are paged: position p sits at offset p % page_size of a page
    no other request holds."""
    page = served.config.page_size
    owners: dict[int, str] = {}
    for req in served.scheduler.running:
        slots = served.req_to_token_pool.req_to_token[req.req_pool_idx, : req.kv_len].tolist()
        assert all(slot % page == position % page for position, slot in enumerate(slots)), req.rid
        for slot in slots[req.tree_owned_len :]:
            assert owners.setdefault(slot // page, req.rid) == req.rid, f"page {slot // page} is shared"


@pytest.mark.parametrize("page_size", PAGE_SIZES)
@pytest.mark.parametrize("mode", MODES)
def test_clean_paged_traffic_is_clean_and_leaks_no_page(mode, page_size):
    served = engine(mode, page_size)
    served.add_step_hook(check_paging)
    prompts, limits = workload()
    results = served.generate(prompts, limits)
    oracle = TokenOracle(seed=0, vocab_size=served.config.vocab_size)
    assert [list(r.output_ids) for r in results] == [
        oracle.continuation(p, n) for p, n in zip(prompts, limits, strict=True)
    ]
    if page_size <= 32:  # prefixes of 64 shared tokens span whole pages
        assert sum(r.cached_tokens for r in results) > 0
    served.canary.flush()
    assert served.canary.violations == []
    # Idle: every page is free or the tree's; in swa every SWA page is free or mapped by the tree.
    tree_size = served.radix_cache.tree.total_size()
    tree_tokens = tree_size[0] if isinstance(tree_size, tuple) else tree_size
    assert served.full_allocator.available_size() + tree_tokens == served.config.max_total_tokens
    if mode == "swa":
        mapped = int((served.swa_allocator.full_to_swa_index_mapping[:-1] > 0).sum())
        assert served.swa_allocator.available_size() + mapped == served.swa_allocator.size
    assert served.flush_cache() and served.full_allocator.available_size() == served.config.max_total_tokens


@pytest.mark.parametrize(
    ("mode", "page_size"),
    [
        ("mha", 4),
        pytest.param("swa", 4, marks=pytest.mark.slow),
        pytest.param("mha", 16, marks=pytest.mark.slow),
        pytest.param("swa", 16, marks=pytest.mark.slow),
    ],
)
def test_sglangs_paged_memory_serves_as_the_engines_own_does(mode, page_size):
    """Same outputs as the engine's own paged memory; in mha (one radix tree design) also the same
    prefix reuse and forward count. In swa SGLang's UnifiedRadixCache decides SWA residency its own
    way, and SGLang pages the SWA pool where the engine allocates it per token."""
    prompts, limits = workload(seed=8)
    runs = {}
    for backend in ("mock", "sglang"):
        served = engine(mode, page_size, backend)
        results = served.generate(prompts, limits)
        served.canary.flush()
        assert served.canary.violations == [], backend
        runs[backend] = (served.forward_count, [r.cached_tokens for r in results], [r.output_ids for r in results])
    assert runs["sglang"][2] == runs["mock"][2]
    if mode == "mha":
        assert runs["sglang"] == runs["mock"]


def run_with_fault(mode: str, page_size: int, fault, *, at_forward: int = 10) -> tuple[list, object]:
    served = engine(mode, page_size)
    applied: list[object] = []

    def hook(current: Engine) -> None:
        if current.forward_count + 1 == at_forward and not applied and current.scheduler.running:
            applied.append(fault(current))

    served.add_step_hook(hook)
    prompts, _ = workload(seed=5)
    served.generate(prompts[:8], 10)
    assert applied, "the fault found no target"
    served.canary.flush()
    return served.canary.violations, applied[0]


def free_a_live_page(current: Engine) -> int:
    """Free the page of a running request's first private slot (SGLang's allocator takes it back)."""
    req = max(current.scheduler.running, key=lambda r: r.kv_len - r.tree_owned_len)
    slot = int(current.req_to_token_pool.req_to_token[req.req_pool_idx, req.tree_owned_len])
    page = current.config.page_size
    if current.swa_allocator is not None:
        current.swa_allocator.free_swa(torch.arange(slot // page * page, slot // page * page + page))
    current.full_allocator.free_slots_unchecked([slot])
    return slot // page


def remap_a_live_position(current: Engine) -> int:
    req = max(current.scheduler.running, key=lambda r: r.kv_len)
    rows = current.req_to_token_pool.req_to_token
    rows[req.req_pool_idx, req.kv_len - 2] = rows[req.req_pool_idx, 0]
    return req.kv_len - 2


@pytest.mark.parametrize("mode", MODES)
def test_a_page_freed_while_in_use_is_caught_once_handed_out(mode):
    violations, page = run_with_fault(mode, 16, free_a_live_page)
    assert any(v.slot_idx // 16 == page and {"chain_hash", "position"} & set(v.fail_reasons) for v in violations)


@pytest.mark.parametrize("mode", MODES)
def test_a_remapped_position_is_caught_on_pages(mode):
    violations, _ = run_with_fault(mode, 16, remap_a_live_position)
    assert any(v.launch_tag.startswith("HEAD_") and "position" in v.fail_reasons for v in violations)
