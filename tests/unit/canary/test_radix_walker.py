"""The radix walker on several tree shapes, and the sweep plans built from its walks."""

from __future__ import annotations

import sys

import pytest
import torch

from kv_canary.buffer_group import CanaryBufferGroup
from kv_canary.engine_protocols import RadixWalk
from kv_canary.kernels.sweep_plan_reference import build_sweep_plan
from kv_canary.launch_tags import PoolGroupKind
from kv_canary.plans import PADDING_POSITION, PREV_SEQUENCE_START, PREV_UNKNOWN, TOKEN_UNKNOWN
from kv_canary.sweep.radix_walker import walk_radix_cache
from tests.unit.canary.fake_radix import FakeRadixCache


def entries(walk: RadixWalk) -> list[tuple[int, int, int, int]]:
    """(slot, position, prev_slot, token) per walked token."""
    return list(
        zip(walk.slots.tolist(), walk.positions.tolist(), walk.prev_slots.tolist(), walk.tokens.tolist(), strict=True)
    )


def branching_cache() -> FakeRadixCache:
    """root -> [1,2,3] -> {[4,5] -> [6], [7]}; a request running on [1,2,3,7] holds its path."""
    cache = FakeRadixCache()
    trunk = cache.add(None, [1, 2, 3], [10, 11, 12], lock_ref=1)
    left = cache.add(trunk, [4, 5], [20, 21])
    cache.add(left, [6], [30])
    cache.add(trunk, [7], [40], lock_ref=1)
    return cache


def test_an_empty_cache_walks_to_empty_tensors():
    walk = walk_radix_cache(FakeRadixCache(), device="cpu")
    assert walk.num_tokens == 0
    assert all(t.dtype == torch.int64 for t in (walk.slots, walk.positions, walk.prev_slots, walk.tokens))


def test_a_chain_gives_depth_positions_and_each_tokens_predecessor():
    cache = FakeRadixCache()
    node = cache.add(None, [5, 6], [3, 9])
    cache.add(node, [7], [4])
    assert entries(walk_radix_cache(cache, device="cpu")) == [
        (3, 0, PREV_SEQUENCE_START, 5),
        (9, 1, 3, 6),
        (4, 2, 9, 7),
    ]


def test_branches_chain_from_the_last_slot_of_their_parent():
    walked = entries(walk_radix_cache(branching_cache(), device="cpu"))
    assert sorted(walked) == [
        (10, 0, PREV_SEQUENCE_START, 1),
        (11, 1, 10, 2),
        (12, 2, 11, 3),
        (20, 3, 12, 4),
        (21, 4, 20, 5),
        (30, 5, 21, 6),
        (40, 3, 12, 7),
    ]


def test_unlocked_only_skips_held_nodes_but_keeps_positions_below_them_exact():
    walked = entries(walk_radix_cache(branching_cache(), device="cpu", unlocked_only=True))
    assert sorted(walked) == [(20, 3, 12, 4), (21, 4, 20, 5), (30, 5, 21, 6)]


def test_swa_resident_only_skips_tombstoned_nodes_and_walks_through_them():
    cache = FakeRadixCache()
    evicted = cache.add(None, [1, 2], [10, 11], swa_tombstone=True)
    resident = cache.add(evicted, [3], [12])
    cache.add(resident, [4], [13], swa_tombstone=True)
    assert entries(walk_radix_cache(cache, device="cpu", swa_resident_only=True)) == [(12, 2, 11, 3)]
    assert walk_radix_cache(cache, device="cpu").num_tokens == 4  # the filter is opt-in


def test_page_sized_nodes_with_key_objects_and_int32_values():
    cache = FakeRadixCache()
    page = cache.add(None, [1, 2, 3, 4], torch.tensor([8, 9, 10, 11], dtype=torch.int32), key_object=True)
    cache.add(page, [5, 6, 7, 8], torch.tensor([16, 17, 18, 19], dtype=torch.int32), key_object=True)
    walk = walk_radix_cache(cache, device="cpu")
    assert walk.slots.tolist() == [8, 9, 10, 11, 16, 17, 18, 19]
    assert walk.positions.tolist() == list(range(8))
    assert walk.prev_slots.tolist() == [PREV_SEQUENCE_START, 8, 9, 10, 11, 16, 17, 18]
    assert walk.tokens.tolist() == list(range(1, 9)) and walk.slots.dtype == torch.int64


def test_a_chain_deeper_than_the_recursion_limit_is_walked():
    cache, node = FakeRadixCache(), None
    depth = sys.getrecursionlimit() + 200
    for position in range(depth):
        node = cache.add(node, [position % 50], [position + 1])
    walk = walk_radix_cache(cache, device="cpu")
    assert walk.num_tokens == depth and walk.positions[-1] == depth - 1 and walk.prev_slots[-1] == depth - 1


def test_a_value_that_does_not_match_its_key_is_a_clear_error():
    cache = FakeRadixCache()
    cache.add(None, [1, 2, 3], [5, 6])
    with pytest.raises(ValueError, match="3 key tokens but a value of shape \\(2,\\)"):
        walk_radix_cache(cache, device="cpu")


def swa_group(mapping: torch.Tensor) -> CanaryBufferGroup:
    return CanaryBufferGroup(
        kind=PoolGroupKind.SWA, num_slots=8, halves={}, full_to_swa_index_mapping=mapping, window=4
    )


def test_full_sweep_plan_expects_the_radix_tokens_at_their_depths():
    walk = walk_radix_cache(branching_cache(), device="cpu")
    plan = build_sweep_plan(walk, CanaryBufferGroup(kind=PoolGroupKind.FULL, num_slots=64, halves={}))
    assert int(plan.num_valid) == walk.num_tokens == plan.capacity
    assert plan.slot_indices.tolist() == walk.slots.tolist()
    assert plan.prev_slot_indices.tolist() == walk.prev_slots.tolist()
    assert plan.expected_positions.tolist() == walk.positions.tolist()
    assert plan.expected_tokens.tolist() == walk.tokens.tolist()


def test_swa_sweep_plan_translates_and_pads_what_is_not_resident():
    cache = FakeRadixCache()
    cache.add(None, [1, 2, 3, 4], [10, 11, 12, 13])
    mapping = torch.zeros(16, dtype=torch.int64)
    mapping[[12, 13]] = torch.tensor([5, 2])  # positions 0 and 1 slid out of the window
    plan = build_sweep_plan(walk_radix_cache(cache, device="cpu"), swa_group(mapping))
    assert plan.slot_indices.tolist() == [0, 0, 5, 2]
    assert plan.expected_positions.tolist() == [PADDING_POSITION, PADDING_POSITION, 2, 3]  # skipped
    assert plan.prev_slot_indices.tolist() == [PREV_SEQUENCE_START, PREV_UNKNOWN, PREV_UNKNOWN, 5]


def test_an_empty_walk_still_gives_a_launchable_plan():
    walk = walk_radix_cache(FakeRadixCache(), device="cpu")
    plan = build_sweep_plan(walk, swa_group(torch.zeros(4, dtype=torch.int64)))
    assert int(plan.num_valid) == 0 and plan.capacity == 1 and plan.expected_tokens.tolist() == [TOKEN_UNKNOWN]
