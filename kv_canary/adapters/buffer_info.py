"""Make a pool's buffer-info methods (used for KV transfer) report the canary records too.

Engines move KV between instances (disaggregated prefill, offloading) by the (pointer, length,
bytes-per-item) triples these methods return; appending the canary buffers lets the records
travel with the K/V they describe, so a transferred slot verifies on the other side.
"""

from __future__ import annotations

import functools
from typing import Any

from kv_canary.buffer_group import CanaryBufferGroup


def report_canary_buffers(pool: object, method_name: str, group: CanaryBufferGroup, page_size: int) -> None:
    original = getattr(pool, method_name, None)
    if original is None:
        return

    @functools.wraps(original)
    def with_canary_buffers(*args: Any, **kwargs: Any) -> tuple[list[int], list[int], list[int]]:
        pointers, lengths, item_lengths = (list(values) for values in original(*args, **kwargs))
        for half in group.halves.values():
            for records in (half.head, half.tail):
                pointers.append(records.data_ptr())
                lengths.append(records.nbytes)
                item_lengths.append(records[0].nbytes * page_size)
        return pointers, lengths, item_lengths

    setattr(pool, method_name, with_canary_buffers)
