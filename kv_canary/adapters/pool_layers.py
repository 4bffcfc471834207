"""Read a KV (sub-)pool's per-layer buffers and its slot count, whatever its buffer layout.

Pools sized the SGLang way hold ``size + page_size`` slots (page 0 is padding). Most lay their
per-layer buffers out slot-major (``[slots, ...]``, one row per slot); page-major layouts
(SGLang's ``hnd`` and ``vectorized_5d``, DeepSeek-V4's padded FlashMLA pages) lead with pages
instead, so a slot's bytes are not one row. The canary records are per slot either way; only
the real-KV hash needs slot-major rows (``group_builder`` checks that).
"""

from __future__ import annotations

import dataclasses

import torch

from kv_canary.errors import PoolLayoutError


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PoolLayers:
    k_buffers: list[torch.Tensor]
    v_buffers: list[torch.Tensor] | None  # None: the pool stores K (a latent) only
    num_slots: int


def read_pool_layers(
    pool: object, *, what: str, k_names: tuple[str, ...] = ("k_buffer",), v_name: str | None = "v_buffer"
) -> PoolLayers:
    """``k_names``: attribute names to try for the K (or latent) buffers, first present wins."""
    k_buffers = next((getattr(pool, name) for name in k_names if getattr(pool, name, None) is not None), None)
    if k_buffers is None:
        raise PoolLayoutError(
            f"kv_canary: {what} ({type(pool).__name__}) has no {' or '.join(k_names)} yet; install "
            "the canary after the pool has allocated its buffers"
        )
    v_buffers = getattr(pool, v_name, None) if v_name else None
    return PoolLayers(
        k_buffers=list(k_buffers),
        v_buffers=None if v_buffers is None else list(v_buffers),
        num_slots=_num_slots(pool, list(k_buffers)),
    )


def _num_slots(pool: object, k_buffers: list[torch.Tensor]) -> int:
    size, page_size = getattr(pool, "size", None), getattr(pool, "page_size", None)
    if isinstance(size, int) and isinstance(page_size, int):
        return size + page_size
    if not k_buffers:
        return 0
    return k_buffers[0].shape[0]
