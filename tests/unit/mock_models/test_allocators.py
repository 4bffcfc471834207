import logging

import pytest
import torch

from mock_models.engine.allocator import DoubleFreeError, OutOfSlotsError, PagedTokenAllocator
from mock_models.engine.swa_allocator import NOT_RESIDENT, SWATokenAllocator


def test_pages_start_after_the_padding_page_and_lowest_free_pages_come_first():
    allocator = PagedTokenAllocator(num_pages=4, page_size=4, strict=True)
    assert allocator.alloc_slots(2) == [4, 5, 6, 7, 8, 9, 10, 11]
    allocator.free([9])  # freeing any slot frees its whole page
    assert allocator.available_pages() == 3
    assert allocator.alloc_pages(1) == [2]


def test_allocating_more_than_is_free_fails_with_the_counts():
    allocator = PagedTokenAllocator(num_pages=2, page_size=1, strict=True)
    with pytest.raises(OutOfSlotsError, match="asked for 3 pages, 2 free"):
        allocator.alloc_pages(3)


def test_a_double_free_raises_when_strict():
    allocator = PagedTokenAllocator(num_pages=2, page_size=1, strict=True)
    (slot,) = allocator.alloc_slots(1)
    allocator.free([slot])
    with pytest.raises(DoubleFreeError, match=f"page {slot}"):
        allocator.free([slot])


def test_a_double_free_is_logged_and_ignored_when_not_strict(caplog):
    allocator = PagedTokenAllocator(num_pages=2, page_size=1, strict=False)
    (slot,) = allocator.alloc_slots(1)
    allocator.free([slot])
    with caplog.at_level(logging.ERROR, logger="mock_models.engine.allocator"):
        allocator.free([slot])
    assert "double free of page 1" in caplog.text
    assert allocator.available_pages() == 2 and allocator.double_free_count == 1


def test_the_padding_page_is_never_freed():
    allocator = PagedTokenAllocator(num_pages=2, page_size=2, strict=True)
    with pytest.raises(ValueError, match="padding page"):
        allocator.free([1])


def test_the_unchecked_free_hands_a_live_slot_to_the_next_allocation():
    allocator = PagedTokenAllocator(num_pages=4, page_size=1, strict=True)
    live = allocator.alloc_slots(2)
    allocator.free_slots_unchecked([live[1]])
    assert allocator.alloc_slots(1) == [live[1]]


def test_swa_slots_are_mapped_on_allocation_and_unmapped_on_release():
    allocator = SWATokenAllocator(size=4, page_size=2, full_pool_rows=10, device="cpu", strict=True)
    mapping = allocator.full_to_swa_index_mapping
    assert mapping.shape == (11,)
    swa = allocator.alloc_for([3, 7])
    assert swa == [2, 3]  # rows 0 and 1 are the padding page
    assert mapping[[3, 7]].tolist() == swa
    allocator.release([3], [swa[0]])
    assert mapping[3] == NOT_RESIDENT and mapping[7] == swa[1]
    assert allocator.available_size() == 3


def test_free_swa_reads_the_map_and_skips_slots_without_a_row():
    allocator = SWATokenAllocator(size=4, page_size=1, full_pool_rows=10, device="cpu", strict=True)
    allocator.alloc_for([5, 6])
    allocator.free_swa(torch.tensor([4, 5, 6]))  # slot 4 was never resident
    assert allocator.available_size() == 4
    assert not allocator.full_to_swa_index_mapping.any()
