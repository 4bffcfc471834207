"""Scheduling features the bug modes need, correct when no bug is on: chunks cached mid-prefill,
retraction under memory pressure (``new_token_ratio`` below 1), and the overlap scheduler."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kv_canary import CanaryConfig, CanaryMode, RealKvHashMode
from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.engine import Engine
from mock_models.engine.request import GenerationResult, Request
from tests.reliability.engine_invariants import check_engine_idle, check_engine_invariants

_rng = random.Random(5)
LONG = [_rng.randrange(1, 1000) for _ in range(64)]


def engine(mode: str = "mha", **settings: Any) -> Engine:
    defaults: dict[str, Any] = {"swa_window": 8, "chunked_prefill_size": 16, "max_total_tokens": 256}
    config = EngineConfig(model_mode=ModelMode(mode), strict_allocator=True, **(defaults | settings))
    return Engine(config, canary_config=CanaryConfig(mode=CanaryMode.LOG, real_kv_hash=RealKvHashMode.ALL))


def run_checked(engine: Engine) -> dict[str, GenerationResult]:
    """Run until idle, checking the bookkeeping between every two forwards."""
    results: dict[str, GenerationResult] = {}
    while engine.has_work():
        results.update((result.rid, result) for result in engine.step())
        check_engine_invariants(engine)
    check_engine_idle(engine)
    assert engine.canary is not None
    engine.canary.flush()
    assert engine.canary.violations == []
    return results


def alone(config: EngineConfig, prompt: list[int], max_new_tokens: int) -> GenerationResult:
    (result,) = Engine(config.replace(overlap_schedule=False, new_token_ratio=1.0)).generate([prompt], max_new_tokens)
    return result


def assert_as_alone(engine: Engine, results: dict[str, GenerationResult], prompts: dict[str, list[int]]) -> None:
    for rid, prompt in prompts.items():
        result = results[rid]
        reference = alone(engine.config, prompt, result.completion_tokens)
        assert result.output_ids == reference.output_ids
        assert result.output_digests == pytest.approx(reference.output_digests, abs=1e-4)


def test_a_chunked_prompt_is_cached_chunk_by_chunk_and_shared_before_it_is_done():
    eng = engine("mha")
    eng.submit(LONG, 4, rid="long")
    eng.step()
    assert eng.radix_cache.total_size() == 16  # the first chunk, cached as it completed
    (cached,) = list(eng.radix_cache.nodes())
    assert cached.lock_ref == 1  # by the prefilling request, which now owns only what follows
    eng.step()
    eng.submit(LONG[:40] + [1, 2], 4, rid="sharer")  # arrives after two chunks
    results = run_checked(eng)
    assert results["sharer"].cached_tokens == 32
    assert_as_alone(eng, results, {"long": LONG, "sharer": LONG[:40] + [1, 2]})


@pytest.mark.parametrize("mode", ["mha", "swa", "dsv4"])
def test_an_abort_mid_prefill_leaves_the_cached_chunks_to_the_tree(mode):
    eng = engine(mode)
    eng.submit(LONG, 4, rid="long")
    eng.step()
    eng.step()
    assert eng.abort("long")
    check_engine_invariants(eng)
    # mha cached both chunks; SWA modes cache a prompt only when it is done (kv_release.py)
    assert eng.radix_cache.total_size() == (32 if mode == "mha" else 0)
    assert all(node.lock_ref == 0 for node in eng.radix_cache.nodes())
    eng.submit(LONG[:40] + [1, 2], 4, rid="after")
    results = run_checked(eng)
    assert results["after"].cached_tokens == (32 if mode == "mha" else 0)
    assert_as_alone(eng, results, {"after": LONG[:40] + [1, 2]})


@pytest.mark.parametrize("mode", ["mha", "swa", "dsv4"])
@pytest.mark.parametrize("page_size", [1, 4])
def test_a_decode_short_of_pages_retracts_and_the_retracted_request_finishes_as_alone(mode, page_size, monkeypatch):
    # An SWA pool that admits all three at once: the full pool is what runs short.
    swa_pool = {} if mode == "mha" else {"swa_max_total_tokens": 160}
    eng = engine(mode, new_token_ratio=0.0, max_total_tokens=192, page_size=page_size, **swa_pool)
    prompts = {rid: [_rng.randrange(1, 1000) for _ in range(40)] for rid in ("a", "b", "c")}
    for rid, prompt in prompts.items():
        eng.submit(prompt, 40, rid=rid)  # 80 tokens each, 240 in all: not three at once in 192
    retracted: list[str] = []
    retract = eng.kv_cache.retract

    def counting_retract(req: Request) -> None:
        retracted.append(req.rid)
        retract(req)

    monkeypatch.setattr(eng.kv_cache, "retract", counting_retract)
    results = run_checked(eng)
    assert retracted, "the workload outgrew the pool, yet nothing was retracted"
    assert sorted(results) == ["a", "b", "c"]
    assert_as_alone(eng, results, prompts)
    for rid in retracted:  # the outputs were kept: every token's step is before the next one's
        assert list(results[rid].output_steps) == sorted(results[rid].output_steps)


def test_with_ratio_one_nothing_is_ever_retracted(monkeypatch):
    eng = engine("mha", max_total_tokens=192)
    monkeypatch.setattr(eng.kv_cache, "retract", lambda req: pytest.fail(f"retracted {req.rid}"))
    for rid in ("a", "b", "c"):
        eng.submit([_rng.randrange(1, 1000) for _ in range(40)], 40, rid=rid)
    assert sorted(run_checked(eng)) == ["a", "b", "c"]


@pytest.mark.parametrize("mode", ["mha", "swa", "dsv4"])
@pytest.mark.parametrize("page_size", [1, 2])
def test_the_overlap_scheduler_plans_ahead_and_computes_the_same(mode, page_size):
    prompts = {f"r{i}": LONG[: 20 + 7 * i] + [i] for i in range(5)}
    limits = {rid: 3 + 5 * i for i, rid in enumerate(prompts)}
    serial, overlapped = engine(mode, page_size=page_size), engine(mode, page_size=page_size, overlap_schedule=True)
    for eng in (serial, overlapped):
        for rid, prompt in prompts.items():
            eng.submit(prompt, limits[rid], rid=rid)
    serial_results, overlapped_results = run_checked(serial), run_checked(overlapped)
    assert sorted(overlapped_results) == sorted(prompts)
    assert_as_alone(overlapped, overlapped_results, prompts)
    for rid in prompts:
        assert overlapped_results[rid].output_ids == serial_results[rid].output_ids
    # Each request that finished in a decode ran one more token (its overrun), whose K/V is its last output's.
    follow_up = prompts["r0"] + list(overlapped_results["r0"].output_ids) + [5]
    (again,) = overlapped.generate([follow_up], 2)
    assert again.cached_tokens == (len(follow_up) - 1) // page_size * page_size


def test_an_abort_under_overlap_frees_the_slots_of_the_forward_in_flight():
    eng = engine("swa", overlap_schedule=True)
    eng.submit(LONG, 30, rid="long")
    eng.submit(LONG[:20] + [3], 30, rid="kept")
    for _ in range(8):
        eng.step()
        check_engine_invariants(eng)
    assert eng._in_flight is not None and any(item.req.rid == "long" for item in eng._in_flight.items)
    assert eng.abort("long")
    check_engine_invariants(eng)
    results = run_checked(eng)
    assert list(results) == ["kept"]
    assert_as_alone(eng, results, {"kept": LONG[:20] + [3]})
