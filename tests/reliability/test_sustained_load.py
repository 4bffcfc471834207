"""Sustained load on the HTTP server (``bench/http_load.py``): 64 concurrent clients for a bounded time on
shared prefixes and a pool the radix cache must evict from, a share of them giving up mid-request.

Every answer is the token oracle's or a 4xx that says why; the canary reports nothing; once the load
is over and the cache flushed, every page and SWA slot is free, no radix node is locked, nothing is
reserved; the process's memory at the end is within a margin of what it was a quarter into the run.
The short run is in the default suite; ``-m slow`` runs two minutes per mode.
"""

from __future__ import annotations

import httpx
import pytest

from bench.http_load import LoadPlan, build_engine, flush_when_idle, run_clients, serving
from tests.reliability.engine_invariants import check_engine_idle

MEMORY_GROWTH_MIB = 64.0


def load_and_check(plan: LoadPlan) -> None:
    engine = build_engine(plan)
    with serving(engine) as url:
        figures = run_clients(url, engine, plan)
        flush_when_idle(url)
        violations = httpx.get(f"{url}/kv_canary/violations", timeout=60).json()
    assert figures.answered > plan.clients and figures.given_up > 0, figures
    assert figures.wrong == [], figures.wrong[:5]
    unclear = [(status, body) for status, body in figures.errors if not (400 <= status < 500 and '"detail"' in body)]
    assert unclear == [], unclear[:5]
    assert violations["count"] == 0, violations["lines"][:5]
    # The server has stopped: the engine thread is gone, its state is read here alone.
    check_engine_idle(engine)
    assert list(engine.radix_cache.nodes()) == [], "the flushed radix cache still holds nodes"
    assert engine.full_allocator.available_pages() == engine.config.num_pages
    if engine.swa_allocator is not None:
        assert engine.swa_allocator.available_size() == engine.config.swa_pool_size
    quarter, end = figures.rss_mib[len(figures.rss_mib) // 4], figures.rss_mib[-1]
    assert end - quarter < MEMORY_GROWTH_MIB, f"resident memory grew from {quarter:.0f} to {end:.0f} MiB"


def test_a_short_load_of_64_clients_stays_correct_and_leaks_nothing():
    load_and_check(LoadPlan(clients=64, seconds=6, mode="swa"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mha", "swa", "dsv4"])
def test_two_minutes_of_64_clients_stay_correct_and_leak_nothing(mode):
    load_and_check(LoadPlan(clients=64, seconds=120, mode=mode))
