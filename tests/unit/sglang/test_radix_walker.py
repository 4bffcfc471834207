"""The radix walker on SGLang 0.5.23's real trees, built with insert / match_prefix / locks / evict."""

from __future__ import annotations

from array import array

import pytest
import torch

from kv_canary.integrations.sglang import SglangTreeCache
from kv_canary.plans import PREV_SEQUENCE_START, TOKEN_UNKNOWN
from kv_canary.sweep.radix_walker import walk_radix_cache
from tests.unit.sglang import sglang_imports as sgl

pytestmark = pytest.mark.sglang


def key(tokens) -> object:
    return sgl.RadixKey(array("q", tokens))


def build_tree(kind: str, *, swa: bool = False, is_eagle: bool = False):
    """A tree over a real pool and allocator; ``kind``: "radix", "unified-python" or "unified-rust"."""
    rows = sgl.ReqToTokenPool(size=4, max_context_len=32, device="cpu", enable_memory_saver=False)
    if swa:
        pool = sgl.SWAKVPool(
            size=64,
            size_swa=64,
            page_size=1,
            dtype=torch.bfloat16,
            head_num=1,
            head_dim=8,
            full_attention_layer_ids=[0],
            swa_attention_layer_ids=[1],
            device="cpu",
        )
        allocator = sgl.SWATokenToKVPoolAllocator(64, 64, 1, torch.bfloat16, "cpu", pool, need_sort=False)
    else:
        pool = sgl.MHATokenToKVPool(
            size=64,
            page_size=1,
            dtype=torch.bfloat16,
            head_num=1,
            head_dim=8,
            layer_num=1,
            device="cpu",
            enable_memory_saver=False,
        )
        allocator = sgl.TokenToKVPoolAllocator(64, torch.bfloat16, "cpu", pool, need_sort=False)
    params = sgl.CacheInitParams(
        disable=False,
        req_to_token_pool=rows,
        token_to_kv_pool_allocator=allocator,
        page_size=1,
        is_eagle=is_eagle,
        sliding_window_size=2 if swa else None,
    )
    if kind == "radix":
        return sgl.RadixCache(params), allocator
    params.tree_components = (sgl.ComponentType.FULL,) + ((sgl.ComponentType.SWA,) if swa else ())
    params.tree_core_backend = kind.removeprefix("unified-")
    return sgl.UnifiedRadixCache(params), allocator


def branching(tree, allocator):
    """[1 2 3 4 5 6] and [1 2 3 7 8]: the second insert splits the first node after 3 tokens."""
    first = allocator.alloc(6)
    tree.insert(sgl.InsertParams(key=key([1, 2, 3, 4, 5, 6]), value=first.clone()))
    second = torch.cat([first[:3], allocator.alloc(2)])
    assert tree.insert(sgl.InsertParams(key=key([1, 2, 3, 7, 8]), value=second.clone())).prefix_len == 3
    return first.tolist(), second.tolist()


def entries(walk) -> list[tuple[int, int, int, int]]:
    return sorted(
        zip(walk.slots.tolist(), walk.positions.tolist(), walk.prev_slots.tolist(), walk.tokens.tolist(), strict=True)
    )


def expected(first, second, tokens=True):
    rows = [(first[i], i, first[i - 1] if i else PREV_SEQUENCE_START, [1, 2, 3, 4, 5, 6][i]) for i in range(6)]
    rows += [(second[i], i, second[i - 1], [7, 8][i - 3]) for i in (3, 4)]
    return sorted((s, p, prev, t if tokens else TOKEN_UNKNOWN) for s, p, prev, t in rows)


@pytest.mark.parametrize("kind", ["radix", "unified-python"])
def test_walk_of_a_split_tree_gives_every_slot_its_depth_predecessor_and_token(kind):
    tree, allocator = build_tree(kind)
    first, second = branching(tree, allocator)
    assert entries(walk_radix_cache(SglangTreeCache(tree), device="cpu")) == expected(first, second)


def test_rust_tree_core_walks_itself_without_tokens():
    tree, allocator = build_tree("unified-rust")
    with pytest.raises(NotImplementedError):
        _ = tree.root_node  # the nodes live in Rust
    first, second = branching(tree, allocator)
    walk = walk_radix_cache(SglangTreeCache(tree), device="cpu")
    assert entries(walk) == expected(first, second, tokens=False)


@pytest.mark.parametrize("kind", ["radix", "unified-python", "unified-rust"])
def test_locked_path_is_left_out_of_the_unlocked_walk_and_survives_eviction(kind):
    tree, allocator = build_tree(kind)
    first, second = branching(tree, allocator)
    match = tree.match_prefix(sgl.MatchPrefixParams(key=key([1, 2, 3, 7, 8])))
    assert match.device_prefix_len == 5
    lock = tree.lock(match.last_device_node)
    unlocked = walk_radix_cache(SglangTreeCache(tree), device="cpu", unlocked_only=True)
    assert sorted(unlocked.slots.tolist()) == sorted(first[3:])  # the [4 5 6] branch nobody holds
    tree.evict(sgl.EvictParams(num_tokens=64))
    remaining = walk_radix_cache(SglangTreeCache(tree), device="cpu")
    assert sorted(remaining.slots.tolist()) == sorted(second)
    tree.unlock(lock)


def test_eagle_bigram_keys_walk_one_token_per_slot():
    tree, allocator = build_tree("radix", is_eagle=True)
    slots = allocator.alloc(5)
    tree.insert(sgl.InsertParams(key=key([1, 2, 3, 4, 5]), value=slots.clone()))  # 4 bigrams, 4 slots
    (node,) = tree.root_node.children.values()
    assert node.key.is_bigram and len(node.key.token_ids) == len(node.value) + 1
    walk = walk_radix_cache(SglangTreeCache(tree), device="cpu")
    assert (walk.tokens.tolist(), walk.positions.tolist()) == ([1, 2, 3, 4], [0, 1, 2, 3])


@pytest.mark.parametrize("kind", ["unified-python", "unified-rust"])
def test_swa_walk_skips_nodes_whose_swa_rows_are_gone(kind):
    tree, allocator = build_tree(kind, swa=True)
    slots = allocator.alloc(6)
    # The request's first 4 positions slid out of its window before it finished: their SWA rows are
    # free, and the insert keeps them as an SWA tombstone.
    allocator.free_swa(slots[:4])
    tree.insert(
        sgl.InsertParams(
            key=key([1, 2, 3, 4, 5, 6]), value=slots.clone(), component_evicted_seqlens={sgl.ComponentType.SWA: 4}
        )
    )
    full = walk_radix_cache(SglangTreeCache(tree), device="cpu")
    resident = walk_radix_cache(SglangTreeCache(tree), device="cpu", swa_resident_only=True)
    assert sorted(full.slots.tolist()) == slots.tolist()
    assert sorted(resident.slots.tolist()) == slots[4:].tolist()
    assert resident.positions.tolist() == [4, 5] and resident.prev_slots.tolist() == [slots[3], slots[4]]
