"""The host KV tier: evicted radix nodes are written back to host memory with their canary records
and loaded back on a prefix hit; what goes wrong on the way is caught where it is read."""

from __future__ import annotations

import random

import pytest
import torch

from mock_models.engine.host_tier import HostTieredRadixCache
from tests.unit.mock_models.feature_engines import (
    MODES,
    feature_engine,
    prompts_on_shared_prefixes,
    run_checked,
    violations,
)

DOC = [random.Random(5).randrange(1, 500) for _ in range(40)]


def offloaded_doc(mode: str, **settings):
    """An engine whose cache held DOC (cached by one request), then pushed it to the host."""
    engine = feature_engine(mode, host_tier_tokens=1024, max_total_tokens=128, page_size=2, **settings)
    rng = random.Random(6)
    engine.generate([DOC + [1]], 4)
    for _ in range(4):
        engine.generate([[rng.randrange(500, 1000) for _ in range(40)]], 4)
    cache = engine.radix_cache
    assert isinstance(cache, HostTieredRadixCache) and cache.host_path(DOC)
    return engine, cache


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("page_size", [1, 2])
def test_offload_and_load_back_cycles_stay_clean_and_exact(mode, page_size):
    engine = feature_engine(mode, page_size=page_size, host_tier_tokens=1024, max_total_tokens=128)
    prompts = prompts_on_shared_prefixes(seed=page_size, count=14, lengths=(20, 40))
    run_checked(engine, prompts, [6 + i % 5 for i in range(14)])
    assert violations(engine) == []
    cache = engine.radix_cache
    assert cache.offloads > 0 and cache.load_backs > 0


@pytest.mark.parametrize("mode", MODES)
def test_a_loaded_back_prefix_is_read_from_the_host_copy_with_its_records(mode):
    engine, cache = offloaded_doc(mode)
    loads = cache.load_backs
    (result,) = engine.generate([DOC + [2, 3]], 5)
    assert cache.load_backs > loads and result.cached_tokens == 40
    assert list(result.output_ids) == engine.oracle.continuation(DOC + [2, 3], 5)
    assert violations(engine) == []


def test_a_full_host_drops_its_least_recently_used_leaves_and_a_flush_empties_it():
    engine = feature_engine("mha", host_tier_tokens=64, max_total_tokens=128)
    rng = random.Random(7)
    for _ in range(8):
        engine.generate([[rng.randrange(1, 1000) for _ in range(40)]], 4)
    cache = engine.radix_cache
    assert cache.offloads > 2 and sum(len(host.key) for host in cache.host_nodes()) <= 64
    assert len(cache.host.free_pages) == 64 - sum(len(host.copy.pages) for host in cache.host_nodes())
    assert engine.flush_cache() and list(cache.host_nodes()) == [] and len(cache.host.free_pages) == 64


@pytest.mark.parametrize("mode", MODES)
def test_a_load_back_into_the_wrong_slots_is_caught_when_the_prefix_is_read(mode):
    engine, cache = offloaded_doc(mode)
    cache.arm_wrong_slots(swa_rows_only=mode == "dsv4")
    step = engine.forward_count + 1
    engine.generate([DOC + [2, 3]], 3)
    found = violations(engine)
    assert found and min(v.step for v in found) == step
    assert {"position", "chain_hash"} & {reason for v in found for reason in v.fail_reasons}


@pytest.mark.parametrize("mode", MODES)
def test_a_host_copy_overwritten_while_offloaded_is_caught_when_loaded_back(mode):
    engine, cache = offloaded_doc(mode)
    (target,) = cache.host_path(DOC)[-1:]
    donor = next(
        host
        for host in cache.host_nodes()
        if host is not target and (host.copy.swa_slots is not None or mode != "dsv4")  # dsv4 guards SWA rows only
    )
    cache.host.overwrite(target.copy, with_copy=donor.copy)
    step = engine.forward_count + 1
    engine.generate([DOC + [2, 3]], 3)
    found = violations(engine)
    assert found and min(v.step for v in found) == step and any("token" in v.fail_reasons for v in found)


@pytest.mark.parametrize("mode", ["swa", "dsv4"])
def test_a_stale_full_to_swa_translation_after_load_back_is_caught(mode):
    engine, cache = offloaded_doc(mode)
    engine.submit(DOC + [2, 3], 6)
    engine.step()  # the prefill loads DOC back: new SWA slots, the old ones others' by now
    restore = cache.restores[-1]
    mapping = engine.swa_allocator.full_to_swa_index_mapping
    old = torch.tensor(restore.swa_slots_at_offload)
    assert (old != torch.tensor(restore.swa_slots)).any()
    mapping[torch.tensor(restore.full_slots)[old != 0]] = old[old != 0]
    step = engine.forward_count + 1
    engine.run_until_idle()
    found = violations(engine)
    assert found and min(v.step for v in found) == step and all(v.launch_tag.endswith("_SWA") for v in found)
