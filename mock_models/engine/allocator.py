"""The paged full-pool slot allocator.

Slot ``s`` lives in page ``s // page_size``; page 0 is padding (slot 0 is what padded entries
point at) and is never handed out. Free pages sit in a min-heap, so a freed page is handed out
again soon: a slot freed too early (a double free) is reused quickly, as in a busy engine.
All bookkeeping is on the host: allocating never waits for the device.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Sequence

from mock_models.engine.memory_protocols import ExtendSpan

logger = logging.getLogger(__name__)


class OutOfSlotsError(RuntimeError):
    """An allocation asked for more than is free; the scheduler's reservations should prevent it."""


class DoubleFreeError(RuntimeError):
    """An index freed while already free (debug check)."""


class FreeList:
    """Free indices in ``[first, first + count)``: a min-heap plus a free flag per index.

    ``free`` checks for double frees (raise when strict, else log and skip); ``free_unchecked``
    is the raw path a fault injector uses to bypass that check.
    """

    def __init__(self, *, first: int, count: int, what: str, strict: bool) -> None:
        self.first = first
        self.count = count
        self.what = what  # "page" or "SWA slot", for messages
        self.strict = strict
        self._is_free = [False] * first + [True] * count
        self._heap = list(range(first, first + count))
        self._num_free = count
        self.double_free_count = 0

    def __len__(self) -> int:
        return self._num_free

    def pop(self, n: int) -> list[int]:
        if n > self._num_free:
            raise OutOfSlotsError(f"asked for {n} {self.what}s, {self._num_free} free of {self.count}")
        taken: list[int] = []
        while len(taken) < n:
            index = heapq.heappop(self._heap)
            if self._is_free[index]:  # else a stale heap entry left by free_unchecked
                self._is_free[index] = False
                taken.append(index)
        self._num_free -= n
        return taken

    def push(self, indices: Iterable[int]) -> None:
        for index in indices:
            if not self.first <= index < self.first + self.count:
                raise ValueError(
                    f"{self.what} {index} is outside [{self.first}, {self.first + self.count}) "
                    "(index 0 and the padding page are never freed)"
                )
            if self._is_free[index]:
                self.double_free_count += 1
                message = f"double free of {self.what} {index}: it is already free"
                if self.strict:
                    raise DoubleFreeError(message)
                logger.error("%s; ignored (strict_allocator=False)", message)
                continue
            self._mark_free(index)

    def push_unchecked(self, indices: Iterable[int]) -> None:
        for index in indices:
            if not self._is_free[index]:
                self._mark_free(index)
            heapq.heappush(self._heap, index)

    def _mark_free(self, index: int) -> None:
        self._is_free[index] = True
        self._num_free += 1
        heapq.heappush(self._heap, index)


class PagedTokenAllocator:
    """Hands out whole pages of full-pool slots; frees by slot (each slot's page is freed once)."""

    def __init__(self, *, num_pages: int, page_size: int, strict: bool = False) -> None:
        self.page_size = page_size
        self.num_pages = num_pages
        self.size = num_pages * page_size
        self._pages = FreeList(first=1, count=num_pages, what="page", strict=strict)

    @property
    def double_free_count(self) -> int:
        return self._pages.double_free_count

    def available_pages(self) -> int:
        return len(self._pages)

    def available_size(self) -> int:
        return len(self._pages) * self.page_size

    def alloc_pages(self, num_pages: int) -> list[int]:
        return self._pages.pop(num_pages)

    def alloc_slots(self, num_pages: int) -> list[int]:
        """Every slot of ``num_pages`` fresh pages, page after page."""
        return [
            page * self.page_size + offset for page in self.alloc_pages(num_pages) for offset in range(self.page_size)
        ]

    def alloc_extend(self, spans: Sequence[ExtendSpan]) -> list[int]:
        """Each span continues its partly filled last page, then takes fresh pages."""
        slots: list[int] = []
        for span in spans:
            room = 0 if span.continue_after < 0 else self.page_size - 1 - span.continue_after % self.page_size
            continued = [span.continue_after + 1 + i for i in range(min(span.extend_len, room))]
            fresh = span.extend_len - len(continued)
            slots += continued + self.alloc_slots(-(-fresh // self.page_size))[:fresh]
        return slots

    def free(self, slots: Iterable[int]) -> None:
        """Free the pages holding ``slots``; the caller owns every slot of those pages."""
        self._pages.push(self._pages_of(slots))

    def free_slots_unchecked(self, slots: Iterable[int]) -> None:
        """Fault-injection path: free the pages holding ``slots`` without the double-free check."""
        self._pages.push_unchecked(self._pages_of(slots))

    def _pages_of(self, slots: Iterable[int]) -> list[int]:
        return sorted({slot // self.page_size for slot in slots})
