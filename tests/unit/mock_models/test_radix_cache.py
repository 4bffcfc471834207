import pytest
import torch

from mock_models.engine.allocator import PagedTokenAllocator
from mock_models.engine.radix_cache import RadixCache
from mock_models.engine.swa_allocator import SWATokenAllocator


def make_cache(*, page_size: int = 1, pages: int = 64, swa_window: int | None = None) -> RadixCache:
    allocator = PagedTokenAllocator(num_pages=pages, page_size=page_size, strict=True)
    swa = None
    if swa_window is not None:
        swa = SWATokenAllocator(
            size=pages * page_size,
            page_size=page_size,
            full_pool_rows=(pages + 1) * page_size,
            device="cpu",
            strict=True,
        )
    return RadixCache(
        page_size=page_size, device="cpu", full_allocator=allocator, swa_allocator=swa, swa_window=swa_window
    )


def insert_new(cache: RadixCache, key: list[int], *, swa_resident_from: int = 0) -> torch.Tensor:
    """Insert ``key`` with freshly allocated slots (and SWA rows), freeing the duplicates like the engine."""
    pages = -(-len(key) // cache.page_size)
    slots = cache.full_allocator.alloc_slots(pages)[: len(key)]
    if cache.swa_allocator is not None:
        cache.swa_allocator.alloc_for(slots)
    result = cache.insert(key, torch.tensor(slots), swa_resident_from=swa_resident_from)
    if result.prefix_len:
        duplicates = slots[: result.prefix_len]
        if cache.swa_allocator is not None:
            cache.swa_allocator.free_swa(torch.tensor(duplicates))
        cache.full_allocator.free(duplicates)
    return torch.tensor(slots)


def test_match_returns_the_inserted_slots_of_the_longest_prefix():
    cache = make_cache()
    slots = insert_new(cache, [1, 2, 3, 4])
    match = cache.match_prefix([1, 2, 3, 9])
    assert match.device_indices.tolist() == slots[:3].tolist()
    assert match.last_node.key == [1, 2, 3]  # the node was split at the divergence
    assert cache.match_prefix([7]).prefix_len == 0


def test_insert_reports_what_was_already_present():
    cache = make_cache()
    insert_new(cache, [1, 2, 3])
    result = cache.insert([1, 2, 3, 4, 5], torch.tensor([0, 0, 0, 40, 41]))
    assert result.prefix_len == 3
    assert result.last_node.key == [4, 5] and result.last_node.value.tolist() == [40, 41]


def test_node_shape_is_sglang_like():
    cache = make_cache(swa_window=4)
    insert_new(cache, [1, 2, 3])
    (node,) = cache.root_node.children.values()
    assert node.parent is cache.root_node and node.children == {}
    assert node.key == [1, 2, 3] and node.value.dtype == torch.int64 and node.value.shape == (3,)
    assert node.lock_ref == 0 and node.last_access_time > 0 and node.swa_tombstone is False


def test_keys_are_whole_pages():
    cache = make_cache(page_size=4)
    insert_new(cache, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])  # the partial last page is not cached
    assert cache.total_size() == 8
    assert cache.match_prefix([1, 2, 3, 4, 5, 6, 99, 99]).prefix_len == 4  # a partial page does not match


def test_locked_nodes_are_never_evicted_and_unlocking_makes_them_evictable():
    cache = make_cache()
    insert_new(cache, [1, 2, 3])
    insert_new(cache, [1, 2, 7, 8])
    match = cache.match_prefix([1, 2, 3])
    cache.inc_lock_ref(match.last_node)
    assert cache.protected_size() == 3 and cache.evictable_size() == 2
    assert cache.evict(100) == 2  # only the unlocked [7, 8] leaf
    assert cache.total_size() == 3
    cache.dec_lock_ref(match.last_node)
    assert cache.evict(100) == 3 and cache.total_size() == 0
    assert cache.full_allocator.available_pages() == 64


def test_eviction_takes_the_least_recently_used_leaf_first():
    cache = make_cache()
    insert_new(cache, [1, 1])
    insert_new(cache, [2, 2])
    cache.match_prefix([1, 1])  # touch: [2, 2] is now the oldest
    cache.evict(1)
    assert cache.match_prefix([2, 2]).prefix_len == 0 and cache.match_prefix([1, 1]).prefix_len == 2


def test_unlocking_a_node_that_is_not_locked_is_an_error():
    cache = make_cache()
    insert_new(cache, [1, 2])
    with pytest.raises(RuntimeError, match="not locked"):
        cache.dec_lock_ref(cache.match_prefix([1, 2]).last_node)


def test_evict_node_refuses_a_locked_node_unless_forced():
    cache = make_cache()
    insert_new(cache, [1, 2])
    node = cache.match_prefix([1, 2]).last_node
    cache.inc_lock_ref(node)
    with pytest.raises(ValueError, match="locked"):
        cache.evict_node(node)
    cache.evict_node(node, force=True)
    assert cache.total_size() == 0 and cache.full_allocator.available_pages() == 64


def test_reset_frees_everything_and_refuses_while_locked():
    cache = make_cache(swa_window=4)
    insert_new(cache, [1, 2, 3])
    node = cache.match_prefix([1, 2, 3]).last_node
    cache.inc_lock_ref(node)
    with pytest.raises(RuntimeError, match="locked"):
        cache.reset()
    cache.dec_lock_ref(node)
    cache.reset()
    assert cache.total_size() == 0 and cache.root_node.children == {}
    assert cache.full_allocator.available_pages() == 64 and cache.swa_allocator.available_size() == 64


def test_swa_insert_tombstones_the_positions_whose_swa_rows_were_released():
    cache = make_cache(swa_window=4)
    key = list(range(1, 11))
    slots = cache.full_allocator.alloc_slots(10)
    swa = cache.swa_allocator.alloc_for(slots)
    cache.swa_allocator.release(slots[:6], swa[:6])  # positions 0..5 slid out of the window
    cache.insert(key, torch.tensor(slots), swa_resident_from=6)
    (head,) = cache.root_node.children.values()
    (tail,) = head.children.values()
    assert (head.key, head.swa_tombstone) == (key[:6], True)
    assert (tail.key, tail.swa_tombstone) == (key[6:], False)


def test_swa_match_ends_where_the_last_window_is_resident():
    cache = make_cache(swa_window=4)
    key = list(range(1, 11))
    slots = cache.full_allocator.alloc_slots(10)
    swa = cache.swa_allocator.alloc_for(slots)
    cache.swa_allocator.release(slots[:6], swa[:6])
    cache.insert(key, torch.tensor(slots), swa_resident_from=6)
    assert cache.match_prefix(key).prefix_len == 10  # window [6, 10) resident
    assert cache.match_prefix(key[:8]).prefix_len == 0  # window [4, 8) has tombstoned 4 and 5
    assert cache.match_len(key[:8]) == 8  # SWA residency aside


def test_swa_eviction_tombstones_unlocked_nodes_and_keeps_their_full_slots():
    cache = make_cache(swa_window=2)
    insert_new(cache, [1, 2, 3])
    insert_new(cache, [5, 6])
    locked = cache.match_prefix([5, 6]).last_node
    cache.inc_lock_ref(locked)
    assert cache.evict_swa(100) == 3
    tombstoned = cache.root_node.children[(1,)]
    assert tombstoned.swa_tombstone and not locked.swa_tombstone
    assert not cache.swa_allocator.full_to_swa_index_mapping[tombstoned.value].any()
    assert cache.total_size() == 5 and cache.swa_allocator.available_size() == 62
    assert cache.match_prefix([1, 2, 3]).prefix_len == 0
