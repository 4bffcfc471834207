"""Engine.abort: a dropped request gives back every slot, lock and reservation, and nothing else changes."""

import pytest

from kv_canary import CanaryConfig, CanaryMode, RealKvHashMode
from kv_canary_contract.token_oracle import TokenOracle
from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.engine import Engine
from tests.reliability.engine_invariants import check_engine_idle, check_engine_invariants

PREFIX = list(range(200, 236))


def running(engine: Engine, rid: str):
    return next(req for req in engine.scheduler.running if req.rid == rid)


def canary_engine(mode: str, page_size: int = 1) -> Engine:
    config = EngineConfig(
        model_mode=ModelMode(mode),
        swa_window=8,
        page_size=page_size,
        max_total_tokens=256,
        max_running_requests=4,
        chunked_prefill_size=24,
        strict_allocator=True,
    )
    return Engine(
        config, canary_config=CanaryConfig(mode=CanaryMode.LOG, real_kv_hash=RealKvHashMode.ALL, sweep_interval=2)
    )


def test_aborting_a_waiting_request_drops_it_before_it_runs():
    engine = canary_engine("mha")
    kept = engine.submit([1, 2, 3], 4)
    dropped = engine.submit([4, 5, 6], 4)
    assert engine.abort(dropped)
    results = engine.run_until_idle()
    assert list(results) == [kept]
    check_engine_idle(engine)


def test_aborting_an_unknown_or_finished_request_changes_nothing():
    engine = canary_engine("mha")
    (finished,) = engine.generate([[1, 2, 3]], 2)
    assert not engine.abort(finished.rid) and not engine.abort("no-such-request")
    check_engine_idle(engine)


@pytest.mark.parametrize("page_size", [1, 4])
@pytest.mark.parametrize("mode", ["mha", "swa", "dsv4"])
def test_aborting_running_requests_mid_prefill_and_mid_decode_frees_everything(mode, page_size):
    engine = canary_engine(mode, page_size)
    oracle = TokenOracle(seed=0, vocab_size=engine.config.vocab_size)
    long_prompt = PREFIX + list(range(40))  # 76 tokens: prefilled over several 24-token chunks
    mid_prefill = engine.submit(long_prompt, 10)
    survivor = engine.submit(PREFIX + [7, 8, 9], 30)
    mid_decode = engine.submit(PREFIX + [3], 30)
    engine.step()
    assert 0 < running(engine, mid_prefill).kv_len < len(long_prompt)
    assert engine.abort(mid_prefill)
    check_engine_invariants(engine)
    results = {}
    for _ in range(12):  # well into the decodes, past the 8-token window
        results.update((result.rid, result) for result in engine.step())
    assert running(engine, mid_decode).output_ids
    assert engine.abort(mid_decode)
    check_engine_invariants(engine)
    results.update(engine.run_until_idle())
    assert list(results) == [survivor]
    assert list(results[survivor].output_ids) == oracle.continuation(PREFIX + [7, 8, 9], 30)
    check_engine_idle(engine)
    # The shared prefix outlived the aborts, unlocked: a new request reuses it, and the canary saw nothing.
    (again,) = engine.generate([PREFIX + [1]], 3)
    assert again.cached_tokens >= len(PREFIX) - page_size
    engine.canary.flush()
    assert engine.canary.violations == []
