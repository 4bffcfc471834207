"""End to end on SGLang 0.5.23's real pools, allocators and radix caches: clean traffic stays
clean, and faults planted in the real structures are caught with the expected tags and reasons."""

from __future__ import annotations

import pytest
import torch

from kv_canary import CanaryConfig, KernelBackend, RealKvHashMode
from tests.unit.sglang.sglang_engine import TREE_KINDS, SglangEngine

pytestmark = pytest.mark.sglang

PROMPT = list(range(10, 22))


def make_engine(*, mode="mha", tree="radix", sweep_interval=0, **engine_args) -> SglangEngine:
    config = CanaryConfig(
        backend=KernelBackend.TORCH,
        stats_interval=0,
        health_check_interval=0,
        verify_capacity=512,
        write_capacity=256,
        max_requests_per_forward=8,
        real_kv_hash=RealKvHashMode.PARTIAL,
        sweep_interval=sweep_interval,
    )
    return SglangEngine(config, mode=mode, tree=tree, **engine_args)


def shared_prefix_traffic(engine: SglangEngine, decode_steps: int = 4):
    """One request prefills, decodes and finishes into the tree; two more reuse its prefix and run."""
    first = engine.add_request(PROMPT)
    engine.forward([first])
    for step in range(3):
        engine.forward([first], [[100 + step]])
    engine.finish(first)
    second = engine.add_request(PROMPT[:8] + [50, 51])
    third = engine.add_request(PROMPT[:6] + [60])
    engine.forward([second, third])
    for step in range(decode_steps):
        engine.forward([second, third], [[200 + step], [300 + step]])
    return second, third


def flip_first_byte(row: torch.Tensor) -> None:
    """Change one bit of a slot's K/V row, inside the bytes partial real-KV hashing covers."""
    row.view(torch.uint8).view(-1)[0] ^= 1


def reasons(violations) -> set[str]:
    return {reason for v in violations for reason in v.fail_reasons}


@pytest.mark.parametrize("tree", TREE_KINDS)
def test_clean_traffic_over_the_real_radix_caches_has_no_violations(tree):
    engine = make_engine(tree=tree, sweep_interval=1)
    second, third = shared_prefix_traffic(engine)
    assert second.tree_len == 8 and third.tree_len == 6  # the prefix came from the tree
    assert engine.reported() == []
    kernel_runs = engine.canary.stats_snapshot()["kernel_runs"]
    assert kernel_runs["HEAD_K_FULL"] == 9 and kernel_runs["SWEEP_K_FULL"] == 2 * 9


@pytest.mark.parametrize("tree", [None, "unified-python", "unified-rust"])
def test_clean_swa_traffic_past_the_window_has_no_violations(tree):
    engine = make_engine(mode="swa", tree=tree, sweep_interval=1)
    shared_prefix_traffic(engine, decode_steps=8)
    assert engine.reported() == []
    assert engine.canary.stats_snapshot()["slots_verified"]["HEAD_K_SWA"] > 0


def test_remapped_req_to_token_entry_breaks_the_chain():
    engine = make_engine()
    second, third = shared_prefix_traffic(engine)
    engine.req_to_token_pool.req_to_token[third.row, 7] = engine.slot_of(second, 9)
    engine.forward([third], [[7]])
    violations = engine.reported()
    assert "chain_hash" in reasons(violations)
    assert {"HEAD_K_FULL", "HEAD_V_FULL", "TAIL_K_FULL", "TAIL_V_FULL"} <= {v.launch_tag for v in violations}
    assert {v.position for v in violations} <= {7, 8}


def test_slot_double_freed_through_the_real_allocator_and_reallocated_is_caught():
    engine = make_engine(size=64)
    _second, third = shared_prefix_traffic(engine)
    victim = engine.slot_of(third, 7)  # third's own, uncached slot
    engine.allocator.free(torch.tensor([victim]))  # a double free: third still holds it
    # A long request takes every free slot, the double-freed one (last in the free list) included.
    hog = engine.add_request([7] * engine.allocator.available_size())
    engine.forward([hog])
    assert victim in engine.slots_of(hog).tolist()
    engine.tree_cache.evict(engine.evict_params(num_tokens=1))  # room for third's next token
    engine.forward([third], [[1]])
    hits = [v for v in engine.reported() if v.slot_idx == victim]
    assert hits and {v.launch_tag for v in hits} >= {"HEAD_K_FULL", "HEAD_V_FULL"}
    assert {"position", "chain_hash"} & reasons(hits)


@pytest.mark.parametrize("tree", TREE_KINDS)
def test_locked_radix_node_force_evicted_and_reused_is_caught(tree):
    engine = make_engine(tree=tree, size=64)
    second, third = shared_prefix_traffic(engine)
    # The lock goes missing while second still reads its cached prefix; eviction then frees the
    # prefix through the real tree and allocator, and new requests get those slots.
    engine.tree_cache.unlock(second.lock)
    engine.tree_cache.unlock(third.lock)
    freed = engine.tree_cache.evict(engine.evict_params(num_tokens=64))
    assert freed.num_tokens_evicted > 0
    # A long newcomer takes all free slots but one (kept for second's next token), the evicted ones too.
    newcomer = engine.add_request([9] * (engine.allocator.available_size() - 1))
    engine.forward([newcomer])
    engine.forward([second], [[5]])
    violations = engine.reported()
    prefix_slots = set(engine.slots_of(second)[:8].tolist())
    assert {v.slot_idx for v in violations} & prefix_slots
    assert {"chain_hash", "position"} & reasons(violations)
    assert all(v.launch_tag.startswith(("HEAD_", "TAIL_")) for v in violations)


def test_changed_kv_byte_in_the_real_pool_is_caught_by_the_tail_hash():
    engine = make_engine()
    second, third = shared_prefix_traffic(engine)
    slot = engine.slot_of(second, 2)  # a shared prefix slot, owned by the tree
    flip_first_byte(engine.pool.k_buffer[1][slot])
    engine.forward([third], [[4]])
    assert {(v.launch_tag, v.slot_idx, v.fail_reasons) for v in engine.reported()} == {
        ("TAIL_K_FULL", slot, ("real_kv_hash",))
    }


def test_changed_kv_byte_of_an_idle_cached_prefix_is_caught_by_the_sweep():
    engine = make_engine(sweep_interval=1)
    first = engine.add_request(PROMPT)
    engine.forward([first])
    engine.finish(first)  # cached, and no request holds it
    other = engine.add_request([1, 2, 3])
    engine.forward([other])
    slot = int(
        engine.tree_cache.path_device_indices(
            engine.tree_cache.match_prefix(engine.match_params(PROMPT)).last_device_node
        )[3]
    )
    flip_first_byte(engine.pool.v_buffer[0][slot])
    engine.forward([other], [[4]])
    assert {(v.launch_tag, v.slot_idx, v.fail_reasons) for v in engine.reported()} == {
        ("SWEEP_V_FULL", slot, ("real_kv_hash",))
    }


def test_in_window_swa_corruption_is_caught_under_swa_tags():
    engine = make_engine(mode="swa", tree=None)
    _second, third = shared_prefix_traffic(engine, decode_steps=6)
    full_slot = engine.slot_of(third, len(third.tokens) - 2)  # inside the window the next forward reads
    swa_slot = int(engine.pool.full_to_swa_index_mapping[full_slot])
    flip_first_byte(engine.pool.swa_kv_pool.k_buffer[0][swa_slot])
    engine.forward([third], [[9]])
    assert {(v.launch_tag, v.slot_idx, v.fail_reasons) for v in engine.reported()} == {
        ("TAIL_K_SWA", swa_slot, ("real_kv_hash",))
    }


def test_remapped_swa_mapping_entry_is_caught_under_swa_tags():
    engine = make_engine(mode="swa", tree=None)
    second, third = shared_prefix_traffic(engine, decode_steps=6)
    mapping = engine.pool.full_to_swa_index_mapping
    target = engine.slot_of(third, len(third.tokens) - 2)
    mapping[target] = mapping[engine.slot_of(second, len(second.tokens) - 2)]
    engine.forward([third], [[9]])
    violations = engine.reported()
    assert violations and all(v.launch_tag.endswith("_SWA") for v in violations)
    assert {"chain_hash", "position"} & reasons(violations)
