"""The radix sweep through install_canary: cached slots no request reads are still verified."""

from __future__ import annotations

import logging

import pytest

from kv_canary import CanaryConfig, KernelBackend, RealKvHashMode
from kv_canary.launch_tags import KvHalf, Phase, PoolGroupKind
from kv_canary.records import RecordWord
from kv_canary.sweep.sweep_orchestrator import SweepOrchestrator
from tests.unit.canary.fake_engine import FakeEngine, Request
from tests.unit.canary.fake_radix import FakeRadixCache


def make_engine(backend: KernelBackend = KernelBackend.TORCH, **overrides) -> FakeEngine:
    settings = {
        "backend": backend,
        "sweep_interval": 2,
        "stats_interval": 0,
        "health_check_interval": 0,
        "verify_capacity": 256,
        "write_capacity": 64,
        "max_requests_per_forward": 4,
        **overrides,
    }
    return FakeEngine(CanaryConfig(**settings))


def cache_with_an_idle_prefix(engine: FakeEngine) -> tuple[FakeRadixCache, Request, Request]:
    """Two requests share 6 tokens; ``done`` finished (its branch is cached, unlocked), ``running`` goes on."""
    done = engine.add_request([11, 12, 13, 14, 15, 16, 17, 18])
    engine.forward([done])
    running = engine.add_request([11, 12, 13, 14, 15, 16, 40, 41], share_prefix_with=done, shared_len=6)
    engine.forward([running])
    engine.forward([done, running], new_tokens=[[19], [42]])
    cache = FakeRadixCache()

    def slots(request: Request, start: int, end: int) -> list[int]:
        return [engine.slot_of(request, position) for position in range(start, end)]

    trunk = cache.add(None, done.tokens[:6], slots(done, 0, 6), lock_ref=1)
    cache.add(trunk, done.tokens[6:], slots(done, 6, len(done.tokens)))
    cache.add(trunk, running.tokens[6:], slots(running, 6, len(running.tokens)), lock_ref=1)
    engine.canary.attach_prefix_cache(cache)
    return cache, done, running


def keep_decoding(engine: FakeEngine, request: Request, steps: int) -> None:
    for step in range(steps):
        engine.forward([request], new_tokens=[[300 + step]])


def reported(engine: FakeEngine):
    engine.canary.flush()
    return engine.canary.violations


def sweep(engine: FakeEngine) -> SweepOrchestrator:
    return next(o for o in engine.canary.observers if isinstance(o, SweepOrchestrator))


def test_a_clean_cache_sweeps_without_violations():
    engine = make_engine()
    _, _, running = cache_with_an_idle_prefix(engine)
    keep_decoding(engine, running, 4)
    assert reported(engine) == []
    assert sweep(engine).passes == 2  # forwards 4 and 6; the cache was attached after forward 3
    snapshot = engine.canary.stats_snapshot()
    assert snapshot["kernel_runs"]["SWEEP_K_FULL"] == snapshot["kernel_runs"]["SWEEP_V_FULL"] == 2 * 2  # HEAD, TAIL
    cached_tokens = 6 + 3 + 3  # the shared trunk and the two branches
    assert snapshot["slots_verified"]["SWEEP_V_FULL"] == 2 * 2 * cached_tokens


@pytest.mark.parametrize("backend", [KernelBackend.TORCH, KernelBackend.TRITON])
def test_a_corrupted_record_of_an_idle_cached_prefix_is_caught_by_the_sweep(backend):
    engine = make_engine(backend)
    _, done, running = cache_with_an_idle_prefix(engine)
    victim = engine.slot_of(done, 7)  # only the finished request ever read this slot
    engine.canary.group(PoolGroupKind.FULL).records(Phase.HEAD, KvHalf.K)[victim, RecordWord.POSITION] += 5
    keep_decoding(engine, running, 2)
    violations = reported(engine)
    assert {(v.launch_tag, v.slot_idx, v.position, v.fail_reasons) for v in violations} == {
        ("SWEEP_K_FULL", victim, 7, ("position",)),
        ("SWEEP_K_FULL", engine.slot_of(done, 8), 8, ("chain_hash",)),
    }


def test_changed_real_kv_bytes_of_an_idle_cached_slot_are_caught_by_the_sweep():
    engine = make_engine(real_kv_hash=RealKvHashMode.PARTIAL)
    _, done, running = cache_with_an_idle_prefix(engine)
    victim = engine.slot_of(done, 6)
    engine.pool.v_buffer[0][victim].view(-1)[0] += 1.0
    keep_decoding(engine, running, 2)
    assert {(v.launch_tag, v.slot_idx, v.fail_reasons) for v in reported(engine)} == {
        ("SWEEP_V_FULL", victim, ("real_kv_hash",))
    }


def test_a_slot_freed_and_reused_while_cached_is_caught_by_the_sweep():
    engine = make_engine()
    _, done, running = cache_with_an_idle_prefix(engine)
    victim = engine.slot_of(done, 8)
    engine.free_slots.insert(0, victim)  # freed while the radix cache still holds it
    stranger = engine.add_request([7, 7, 7])
    engine.forward([stranger])
    keep_decoding(engine, running, 1)
    hits = {v.launch_tag: v.fail_reasons for v in reported(engine) if v.slot_idx == victim}
    assert set(hits) == {"SWEEP_K_FULL", "SWEEP_V_FULL"}
    assert all({"position", "chain_hash", "token"} <= set(reasons) for reasons in hits.values())


def test_nothing_is_swept_without_a_prefix_cache_or_between_intervals(caplog):
    caplog.set_level(logging.DEBUG, logger="kv_canary")
    engine = make_engine(sweep_interval=3)
    request = engine.add_request([1, 2])
    engine.forward([request])
    keep_decoding(engine, request, 3)
    assert sweep(engine).passes == 0
    engine.canary.attach_prefix_cache(FakeRadixCache())
    keep_decoding(engine, request, 3)  # forwards 5, 6, 7: only 6 sweeps
    assert sweep(engine).passes == 1
    assert [r.levelno for r in caplog.records if "sweep pass" in r.getMessage()] == [logging.DEBUG]
