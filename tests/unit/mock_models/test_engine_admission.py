"""Admission never wedges: whatever a request's cached prefix pins, an idle engine admits a valid request.

Found by the stateful reliability machine (tests/reliability): locking a matched prefix pins its
SWA-resident rows, and a request also reserves its own SWA budget, so a prefix that is resident
end to end (short prompts that finished at once are cached whole) can leave too little room with
nothing running to ever free it; ``Engine.step`` then raised and a server's engine loop died.
"""

import pytest

from kv_canary_contract.token_oracle import TokenOracle
from mock_models.config import EngineConfig
from mock_models.engine.engine import Engine
from tests.reliability.engine_invariants import check_engine_idle


@pytest.mark.parametrize("mode", ["swa", "dsv4"])
def test_the_shrunk_counterexample_a_prefix_pinned_by_admission_in_the_smallest_swa_pool(mode):
    engine = Engine(
        EngineConfig(
            model_mode=mode,
            max_total_tokens=96,
            swa_window=4,
            swa_max_total_tokens=18,
            max_running_requests=1,
            chunked_prefill_size=8,
            strict_allocator=True,
        )
    )
    engine.generate([[5]], 1)
    (result,) = engine.generate([[5, 6]], 18)
    assert list(result.output_ids) == TokenOracle(seed=0, vocab_size=1024).continuation([5, 6], 18)
    check_engine_idle(engine)


@pytest.mark.parametrize("mode", ["swa", "dsv4"])
def test_a_chain_of_prompts_cached_whole_still_admits_their_extension(mode):
    # The SWA pool is the default half of the full pool; each 32-token prompt finishes in its
    # prefill forward, so it is cached whole, SWA rows included, and the chain pins all of them.
    engine = Engine(
        EngineConfig(
            model_mode=mode, max_total_tokens=256, swa_window=8, chunked_prefill_size=32, strict_allocator=True
        )
    )
    prompt: list[int] = []
    for link in range(4):
        prompt += [(link * 31 + i) % 900 + 1 for i in range(32)]
        engine.generate([prompt], 1)
    assert engine.radix_cache.swa_resident_size() == engine.config.swa_pool_size
    (result,) = engine.generate([prompt + [3]], 10)
    assert result.completion_tokens == 10
    check_engine_idle(engine)


def test_a_request_that_fits_with_its_prefix_still_reuses_it():
    engine = Engine(EngineConfig(model_mode="swa", max_total_tokens=256, swa_window=8, strict_allocator=True))
    engine.generate([list(range(1, 41))], 2)
    (result,) = engine.generate([list(range(1, 41)) + [7]], 2)
    assert result.cached_tokens == 40
