"""Where a K/V half's real bytes live, so TAIL records can hash them."""

from __future__ import annotations

import dataclasses

import torch

from kv_canary.config import PARTIAL_REAL_KV_BYTES, RealKvHashMode
from kv_canary.errors import PoolLayoutError

_WORD_BYTES = 8


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RealKvSource:
    """Per-layer views of one K/V half as int64 words per slot, and a device table of their addresses."""

    layer_words: tuple[torch.Tensor, ...]  # each int64 [num_slots, row_words], aliasing the pool
    layer_pointers: torch.Tensor  # int64 [num_layers]: data_ptr of each view, for the Triton kernels
    row_words: int
    hashed_words: int  # leading words of each row folded into the hash

    @classmethod
    def from_layer_buffers(
        cls, buffers: list[torch.Tensor] | tuple[torch.Tensor, ...], mode: RealKvHashMode
    ) -> RealKvSource | None:
        if mode is RealKvHashMode.NONE or not buffers:
            return None
        views = tuple(_as_words(buffer, index) for index, buffer in enumerate(buffers))
        row_sizes = {view.shape[1] for view in views}
        if len(row_sizes) != 1:
            raise PoolLayoutError(
                f"real-KV layers have rows of different sizes ({sorted(row_sizes)} words); "
                "hash each size as its own source"
            )
        (row_words,) = row_sizes
        hashed = row_words if mode is RealKvHashMode.ALL else min(row_words, PARTIAL_REAL_KV_BYTES // _WORD_BYTES)
        pointers = torch.tensor([view.data_ptr() for view in views], dtype=torch.int64, device=views[0].device)
        return cls(layer_words=views, layer_pointers=pointers, row_words=row_words, hashed_words=hashed)


def _as_words(buffer: torch.Tensor, layer: int) -> torch.Tensor:
    if not buffer.is_contiguous():
        raise PoolLayoutError(f"real-KV layer {layer}: the buffer must be contiguous to be hashed in place")
    num_slots = buffer.shape[0]
    row_bytes = buffer[0].numel() * buffer.element_size() if num_slots else 0
    if row_bytes % _WORD_BYTES or buffer.data_ptr() % _WORD_BYTES:
        raise PoolLayoutError(
            f"real-KV layer {layer}: rows of {row_bytes} bytes are not whole, aligned 8-byte "
            "words; use real_kv_hash=none for this pool"
        )
    return buffer.view(torch.uint8).view(num_slots, row_bytes).view(torch.int64)
