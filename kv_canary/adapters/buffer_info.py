"""Make a pool's buffer-info methods (used for KV transfer) report the canary records too, where
the transfer code moves them with the K/V they describe.

Engines move KV between instances (disaggregated prefill and decode) by the lists of (pointer,
length, bytes-per-item) these methods return, one entry per per-layer buffer; an item is one page,
and a transfer copies items by page index. SGLang (0.5.23) reads two shapes of list:

* **K then V** (``get_contiguous_buf_infos`` of MHA pools, and the SWA sub-pool's list that
  ``SWAKVPool.get_state_buf_infos`` returns): the first half of the entries are K layers, the second
  half V layers, and the transfer pairs them by that split (``CommonKVManager.get_mha_kv_ptrs_with_pp``).
  A K-half record buffer goes at the end of the K half, a V-half one at the end of the V half, so
  each travels in its half.
* **Flat** (DeepSeek-V4's ``get_state_buf_infos``, MLA-style pools): entries pair one for one, so
  the K-only group's records are appended.

A slot's record is 32 bytes, so a record buffer's item is ``32 * page_size`` bytes and its page
index is the pool's: the records of a page travel with that page's K/V. Both sides of a transfer
must install the canary (the lists must match), run the same pipeline-parallel layout (the K/V
split slices each half by layer ranges) and the same attention TP size (a head-sliced transfer
splits every entry into heads, which a record buffer has not); docs/SGLANG.md says more.
"""

from __future__ import annotations

import enum
import functools
from typing import Any

import torch

from kv_canary.buffer_group import CanaryBufferGroup
from kv_canary.errors import PoolLayoutError
from kv_canary.launch_tags import KvHalf


class BufferListLayout(enum.Enum):
    K_THEN_V = "k_then_v"  # [K layers..., V layers...]: the transfer splits the list in halves
    FLAT = "flat"  # one entry per buffer, paired one for one


def report_canary_buffers(
    pool: object, method_name: str, group: CanaryBufferGroup, *, page_size: int, layout: BufferListLayout
) -> None:
    """Wrap ``pool.<method_name>`` so that its lists also carry ``group``'s record buffers."""
    original = getattr(pool, method_name, None)
    if original is None:
        return
    records = {half: [buffers.head, buffers.tail] for half, buffers in group.halves.items()}
    if layout is BufferListLayout.K_THEN_V and set(records) != {KvHalf.K, KvHalf.V}:
        raise PoolLayoutError(
            f"kv_canary: {type(pool).__name__}.{method_name} lists K then V buffers, but the "
            f"{group.kind.value} group guards {sorted(half.value for half in records)} only"
        )

    @functools.wraps(original)
    def with_canary_buffers(*args: Any, **kwargs: Any) -> tuple[list[int], list[int], list[int]]:
        pointers, lengths, item_lengths = (list(values) for values in original(*args, **kwargs))
        entries = list(zip(pointers, lengths, item_lengths, strict=True))
        if layout is BufferListLayout.FLAT:
            entries += _entries(records[KvHalf.K], page_size)
        else:
            if len(entries) % 2:
                raise PoolLayoutError(
                    f"kv_canary: {type(pool).__name__}.{method_name} returned {len(entries)} buffers, not K and V "
                    "halves of equal length; the canary cannot tell where its K records belong"
                )
            k_half, v_half = entries[: len(entries) // 2], entries[len(entries) // 2 :]
            entries = k_half + _entries(records[KvHalf.K], page_size) + v_half + _entries(records[KvHalf.V], page_size)
        return [entry[0] for entry in entries], [entry[1] for entry in entries], [entry[2] for entry in entries]

    setattr(pool, method_name, with_canary_buffers)


def _entries(buffers: list[torch.Tensor], page_size: int) -> list[tuple[int, int, int]]:
    return [(records.data_ptr(), records.nbytes, records[0].nbytes * page_size) for records in buffers]
