"""The engine with the KV canary installed through its public API."""

import pytest

from kv_canary import CanaryConfig, CanaryMode, RealKvHashMode
from kv_canary_contract.token_oracle import TokenOracle
from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.engine import CanaryRaisedError, Engine
from tests.unit.canary.devices import DEVICES

MODES = ["mha", "swa", "dsv4"]


def canary_engine(mode: str, device: str = "cpu", **settings) -> Engine:
    config = EngineConfig(model_mode=ModelMode(mode), device=device, swa_window=16, strict_allocator=True, **settings)
    return Engine(config, canary_config=CanaryConfig(mode=CanaryMode.LOG, real_kv_hash=RealKvHashMode.ALL))


def run_clean_workload(
    mode: str,
    prompts: list[list[int]],
    limits: list[int],
    *,
    max_total_tokens: int,
    swa_max_total_tokens: int,
    device: str = "cpu",
) -> Engine:
    swa = {} if mode == "mha" else {"swa_max_total_tokens": swa_max_total_tokens}
    engine = canary_engine(
        mode,
        device,
        page_size=4,
        max_total_tokens=max_total_tokens,
        max_running_requests=4,
        chunked_prefill_size=32,
        **swa,
    )
    evictions: list[int] = []
    evict = engine.radix_cache.evict

    def counted_evict(num_tokens: int) -> int:
        evictions.append(num_tokens)
        return evict(num_tokens)

    engine.radix_cache.evict = counted_evict
    results = engine.generate(prompts, limits)
    oracle = TokenOracle(seed=0, vocab_size=engine.config.vocab_size)
    assert [list(r.output_ids) for r in results] == [
        oracle.continuation(p, n) for p, n in zip(prompts, limits, strict=True)
    ]
    engine.canary.flush()
    assert engine.canary.kernels.name == ("triton" if device.startswith("cuda") else "torch")
    assert evictions, "the workload should make the radix cache evict"
    assert [record.format() for record in engine.canary.violations] == []
    assert engine.canary.forward_count == engine.forward_count
    assert engine.canary.stats_snapshot()["plan_overflow_entries"] == 0
    return engine


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_a_clean_workload_with_sharing_and_eviction_reports_zero_violations(mode, device, shared_prefix_workload):
    # Five requests, decodes past the 16-token window, a pool that holds about two of them.
    prompts = shared_prefix_workload.prompts[:5]
    run_clean_workload(mode, prompts, [20] * 5, max_total_tokens=160, swa_max_total_tokens=96, device=device)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_the_full_shared_prefix_workload_reports_zero_violations(mode, shared_prefix_workload):
    run_clean_workload(
        mode,
        shared_prefix_workload.prompts,
        shared_prefix_workload.max_new_tokens,
        max_total_tokens=320,
        swa_max_total_tokens=160,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_corrupting_the_window_of_a_running_request_is_reported(mode, device):
    engine = canary_engine(mode, device, max_total_tokens=256)
    engine.submit(list(range(30)), 10)
    engine.step()  # prefill

    def corrupt_newest_position(engine):
        (req,) = engine.scheduler.running
        slot = engine.req_to_token_pool.req_to_token[req.req_pool_idx, req.kv_len - 1].long()
        pool = engine.token_to_kv_pool
        if mode == "mha":
            pool.k_buffer[0][slot] += 1.0
        else:
            pool.swa_kv_pool.k_buffer[0][pool.full_to_swa_index_mapping[slot]] += 1.0
        remove()

    remove = engine.add_step_hook(corrupt_newest_position)
    engine.run_until_idle()
    engine.canary.flush()
    reasons = {reason for record in engine.canary.violations for reason in record.fail_reasons}
    assert "real_kv_hash" in reasons
    # First seen at step 2, the decode that reads the damaged slot; reported at every later read too.
    assert min(record.step for record in engine.canary.violations) == 2


def test_in_raise_mode_the_step_that_surfaces_a_violation_raises_and_the_engine_carries_on():
    engine = Engine(
        EngineConfig(model_mode=ModelMode.MHA, strict_allocator=True, max_total_tokens=256),
        canary_config=CanaryConfig(mode=CanaryMode.RAISE, real_kv_hash=RealKvHashMode.ALL),
    )
    damaged = engine.submit(list(range(30)), 6)
    engine.step()
    (req,) = engine.scheduler.running
    engine.token_to_kv_pool.v_buffer[1][engine.req_to_token_pool.req_to_token[req.req_pool_idx, 3].long()] += 1.0
    with pytest.raises(CanaryRaisedError) as raised:
        engine.run_until_idle()
    assert raised.value.rids == [damaged] and "real_kv_hash" in raised.value.lines[0]
    # The damaged slot is read, and reported, until its request finishes; a report can come a
    # forward or so late, so it may surface in a later request's forward, still naming `damaged`.
    healthy = None
    results = {}
    while engine.has_work() or healthy is None:
        if not engine.has_work():
            healthy = engine.submit([1, 2, 3], 3)
        try:
            results.update((result.rid, result) for result in engine.step())
        except CanaryRaisedError as again:
            assert again.rids == [damaged]
            results.update((result.rid, result) for result in again.results)
    # Every step completed, so the engine stayed consistent and served on.
    assert len(results[healthy].output_ids) == 3


def test_the_engine_runs_without_the_canary_when_its_mode_is_none():
    engine = Engine(EngineConfig(), canary_config=CanaryConfig(mode=CanaryMode.NONE))
    assert engine.canary is None
    assert len(engine.generate([[1, 2, 3]], 2)[0].output_ids) == 2


@pytest.mark.parametrize("mode", ["swa", "dsv4"])
def test_a_window_position_left_without_an_swa_slot_is_reported(mode):
    # Found by the stateful reliability machine: force-evicting a locked radix node frees its SWA
    # rows (map entries 0) while a request's window still reads them; with page_size 4 the next
    # decodes allocate nothing, so the freed slots are not reused and only the SWA view is wrong.
    # The window layers read the SWA pool's padding row, and the verify used to skip slot 0.
    engine = canary_engine(mode, page_size=4, max_total_tokens=256)
    prompt = list(range(100, 140))
    engine.generate([prompt], 1)
    engine.submit(prompt + [5], 4)
    engine.step()
    (req,) = engine.scheduler.running
    engine.radix_cache.evict_node(req.last_node, force=True)
    engine.run_until_idle()
    engine.canary.flush()
    first = min(record.step for record in engine.canary.violations)
    assert first == 3  # the first decode after the eviction
    padding_reads = [record for record in engine.canary.violations if record.step == first]
    assert padding_reads and all(
        record.slot_idx == 0 and record.launch_tag.endswith("_SWA") for record in padding_reads
    )
