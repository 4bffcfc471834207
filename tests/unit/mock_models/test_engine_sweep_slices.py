"""The radix sweep spread over many steps of one node each, in the engine: exact under churn, and in bound.

Between two steps of a round the engine inserts, splits and evicts nodes and hands freed slots to
new tokens; a slot is only ever verified by the step that listed it, so none of that may produce a
violation, and a corrupted idle cached slot must still be reported within two rounds.
"""

from __future__ import annotations

import pytest

from kv_canary import CanaryConfig, CanaryMode, RealKvHashMode
from kv_canary.sweep.sweep_orchestrator import SweepOrchestrator
from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.engine import Engine

MODES = ["mha", "swa", "dsv4"]


def sliced_sweep_engine(mode: str, *, max_total_tokens: int) -> Engine:
    config = EngineConfig(
        model_mode=ModelMode(mode),
        swa_window=16,
        strict_allocator=True,
        page_size=4,
        max_total_tokens=max_total_tokens,
        max_running_requests=4,
        chunked_prefill_size=32,
        swa_max_total_tokens=None if mode == "mha" else 96,
    )
    canary = CanaryConfig(
        mode=CanaryMode.LOG,
        real_kv_hash=RealKvHashMode.PARTIAL,
        sweep_interval=1,
        sweep_step_nodes=1,
        stats_interval=0,
        health_check_interval=0,
    )
    return Engine(config, canary_config=canary)


def sweep_of(engine: Engine) -> SweepOrchestrator:
    assert engine.canary is not None
    return next(observer for observer in engine.canary.observers if isinstance(observer, SweepOrchestrator))


@pytest.mark.parametrize("mode", MODES)
def test_rounds_of_one_node_a_step_stay_clean_while_the_cache_is_split_evicted_and_reused(mode, shared_prefix_workload):
    engine = sliced_sweep_engine(mode, max_total_tokens=160)
    engine.generate(shared_prefix_workload.prompts[:6], [20] * 6)
    assert engine.canary is not None
    engine.canary.flush()
    sweep = sweep_of(engine)
    assert sweep.passes >= 2 and sweep.steps > 2 * sweep.passes, "rounds should span several steps"
    assert [record.format() for record in engine.canary.violations] == []


def test_a_corrupted_idle_cached_slot_is_reported_within_two_rounds():
    engine = sliced_sweep_engine("mha", max_total_tokens=512)
    prompts = [[7, 8, 9, 10] * 4 + [i] * 4 for i in range(1, 7)]  # a shared head, six branches: many nodes
    engine.generate(prompts, [4] * 6)
    nodes = list(engine.radix_cache.nodes())
    victim = nodes[-1]  # an idle branch no later request matches
    assert victim.lock_ref == 0
    engine.token_to_kv_pool.k_buffer[0][victim.value[0]] += 1.0
    corrupted_at = engine.forward_count
    engine.submit([500 + i for i in range(24)], 40)  # a request of its own: the steps go on
    assert engine.canary is not None
    while engine.has_work() and not engine.canary.violations:
        engine.step()
        engine.canary.flush()
    reported = [v for v in engine.canary.violations if v.slot_idx == int(victim.value[0])]
    assert reported and {v.launch_tag for v in reported} == {"SWEEP_K_FULL"}
    # A step lists one node; the new request adds at most a few while it runs.
    bound = 2 * (len(nodes) + 4)
    assert reported[0].step - corrupted_at <= bound
