"""A hybrid SWA engine end to end: the window slides and SWA slots are reused, cleanly or not."""

from __future__ import annotations

from kv_canary import CanaryConfig, KernelBackend, RealKvHashMode
from kv_canary.launch_tags import KvHalf, Phase, PoolGroupKind
from kv_canary.records import RecordWord
from tests.unit.canary.fake_radix import FakeRadixCache
from tests.unit.canary.fake_swa_engine import FakeSwaEngine

WINDOW = 4


def make_engine(backend: KernelBackend = KernelBackend.TORCH, **overrides) -> FakeSwaEngine:
    settings = {
        "backend": backend,
        "stats_interval": 0,
        "health_check_interval": 0,
        "verify_capacity": 256,
        "write_capacity": 64,
        "max_requests_per_forward": 4,
        **overrides,
    }
    return FakeSwaEngine(CanaryConfig(**settings), window=WINDOW, num_swa_slots=24)


def serve_past_the_window(engine: FakeSwaEngine, decode_steps: int = 12):
    first, second = engine.add_request([1, 2, 3, 4, 5, 6]), engine.add_request([9, 8, 7])
    engine.forward([first, second])
    for step in range(decode_steps):
        engine.forward([first, second], new_tokens=[[20 + step], [40 + step]])
    return first, second


def reported(engine: FakeSwaEngine):
    engine.canary.flush()
    return engine.canary.violations


def test_clean_decodes_past_the_window_reusing_swa_slots_have_no_violations():
    # Torch kernels only: the SWA group runs the same kernels as the FULL group, whose Triton
    # parity is tested on its own (and the interpreter is slow over many forwards).
    engine = make_engine()
    first, _ = serve_past_the_window(engine)
    assert reported(engine) == []
    assert engine.swa_slot_of(first, 0) == 0  # slid out of the window
    assert engine.swa_slots_handed_out > 24  # more than the sub-pool holds: freed SWA slots were reused
    runs = engine.canary.stats_snapshot()["slots_verified"]
    assert 0 < runs["HEAD_K_SWA"] < runs["HEAD_K_FULL"]  # the SWA group reads only the window


def test_a_corrupted_swa_record_in_the_window_is_caught_under_swa_tags():
    engine = make_engine()
    first, second = serve_past_the_window(engine)
    victim, successor = (engine.swa_slot_of(first, len(first.tokens) - back) for back in (2, 1))
    engine.canary.group(PoolGroupKind.SWA).records(Phase.HEAD, KvHalf.V)[victim, RecordWord.TOKEN] += 1
    engine.forward([first, second], new_tokens=[[90], [91]])
    # The record fails on its token; its successor's chain hash covered that token.
    assert {(v.launch_tag, v.slot_idx, v.fail_reasons) for v in reported(engine)} == {
        ("HEAD_V_SWA", victim, ("token",)),
        ("HEAD_V_SWA", successor, ("chain_hash",)),
    }


def test_changed_swa_kv_bytes_in_the_window_are_caught_by_the_swa_tail_hash():
    engine = make_engine(real_kv_hash=RealKvHashMode.PARTIAL)
    first, second = serve_past_the_window(engine)
    victim = engine.swa_slot_of(second, len(second.tokens) - 3)
    engine.pool.swa_kv_pool.k_buffer[1][victim].view(-1)[0] -= 2.0
    engine.forward([first, second], new_tokens=[[90], [91]])
    assert {(v.launch_tag, v.slot_idx, v.fail_reasons) for v in reported(engine)} == {
        ("TAIL_K_SWA", victim, ("real_kv_hash",))
    }


def test_an_in_window_mapping_pointed_at_another_swa_slot_is_caught():
    engine = make_engine()
    first, second = serve_past_the_window(engine)
    engine.mapping[engine.slot_of(first, len(first.tokens) - 2)] = engine.swa_slot_of(second, len(second.tokens) - 2)
    engine.forward([first, second], new_tokens=[[90], [91]])
    violations = reported(engine)
    assert violations and all(v.launch_tag.endswith("_SWA") for v in violations)
    assert {"position", "chain_hash"} <= {reason for v in violations for reason in v.fail_reasons}


def test_corruption_that_slid_out_of_the_window_is_not_a_false_alarm():
    engine = make_engine()
    first, second = serve_past_the_window(engine, decode_steps=0)
    old_swa_slot = engine.swa_slot_of(first, 5)
    for step in range(WINDOW + 1):  # position 5 slides out; its SWA slot goes back to the free list
        engine.forward([first, second], new_tokens=[[70 + step], [80 + step]])
    assert engine.swa_slot_of(first, 5) == 0 and old_swa_slot in engine.free_swa_slots
    engine.canary.group(PoolGroupKind.SWA).records(Phase.HEAD, KvHalf.K)[old_swa_slot] = 0
    engine.forward([first, second], new_tokens=[[90], [91]])
    assert reported(engine) == []


def test_the_sweep_verifies_the_swa_rows_of_an_idle_cached_prefix():
    engine = make_engine(sweep_interval=1)
    finished, running = serve_past_the_window(engine, decode_steps=3)
    cache = FakeRadixCache()
    slots = [engine.slot_of(finished, p) for p in range(len(finished.tokens))]
    cache.add(None, finished.tokens, slots)
    engine.canary.attach_prefix_cache(cache)
    engine.forward([running], new_tokens=[[60]])
    assert reported(engine) == []  # out-of-window positions map to 0 and are skipped
    assert engine.canary.stats_snapshot()["slots_verified"]["SWEEP_K_SWA"] == 2 * WINDOW
    victim = engine.swa_slot_of(finished, len(finished.tokens) - 1)
    engine.canary.group(PoolGroupKind.SWA).records(Phase.TAIL, KvHalf.K)[victim, RecordWord.POSITION] = 999
    engine.forward([running], new_tokens=[[61]])
    assert {(v.launch_tag, v.slot_idx, v.fail_reasons) for v in reported(engine)} == {
        ("SWEEP_K_SWA", victim, ("position",))
    }
