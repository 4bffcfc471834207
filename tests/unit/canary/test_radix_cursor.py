"""The radix cursor's reuse of what it met: unchanged nodes cost no rebuild, changed ones are read again."""

from __future__ import annotations

import torch

from kv_canary.plans import SweepSegment
from kv_canary.sweep.radix_cursor import RadixCursor
from tests.unit.canary.fake_radix import FakeRadixCache

CPU = torch.device("cpu")


def _round(cursor: RadixCursor, cache: FakeRadixCache, max_nodes: int = 2) -> list[SweepSegment]:
    segments: list[SweepSegment] = []
    while True:
        listed = cursor.next_slice(cache, max_nodes=max_nodes, max_tokens=1 << 20)
        segments.extend(listed.segments)
        if listed.round_completed:
            return segments


def test_a_second_round_over_an_unchanged_tree_reuses_every_segment():
    cache = FakeRadixCache()
    parent = cache.add(None, [1, 2, 3], [10, 11, 12])
    cache.add(parent, [4, 5], [13, 14])
    cache.add(None, [7], [20])
    cursor = RadixCursor(device=CPU)
    first = _round(cursor, cache)
    second = _round(cursor, cache)
    assert len(first) == 3
    assert all(a is b for a, b in zip(first, second, strict=True))


def test_a_split_node_is_listed_with_its_new_key_slots_and_predecessor():
    cache = FakeRadixCache()
    node = cache.add(None, [1, 2, 3, 4], [10, 11, 12, 13])
    child = cache.add(node, [5], [14])
    cursor = RadixCursor(device=CPU)
    _round(cursor, cache)
    # Split as SGLang does: a new node takes the first tokens, the old one keeps the rest.
    top = cache.add(None, [1, 2], [10, 11])
    node.key, node.value = [3, 4], node.value[2:].clone()
    top.children[(3,)] = node
    segments = _round(cursor, cache)
    by_first = {segment.first_position: segment for segment in segments}
    assert by_first[0].slots.tolist() == [10, 11]
    assert by_first[2].slots.tolist() == [12, 13] and by_first[2].tokens.tolist() == [3, 4]
    assert by_first[2].pred_values is top.value
    assert by_first[4].slots.tolist() == [14] and by_first[4].pred_values is node.value
    assert child.value is by_first[4].slots


def test_segments_of_evicted_nodes_are_forgotten_once_a_round_passed_without_them():
    """A step forgets at most two stale segments per node it lists: here one a step, one step a round."""
    cache = FakeRadixCache()
    for index in range(6):
        cache.add(None, [100 + index], [index + 1])
    cursor = RadixCursor(device=CPU)
    _round(cursor, cache)
    assert cursor.known_nodes == 6
    for index in range(5):
        del cache.root_node.children[(100 + index,)]
    _round(cursor, cache, max_nodes=1)  # the round in which they went unmet
    assert cursor.known_nodes == 6
    remaining = []
    for _ in range(3):
        _round(cursor, cache, max_nodes=1)
        remaining.append(cursor.known_nodes)
    assert remaining == [4, 2, 1]
