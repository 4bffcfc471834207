"""``corrupt_kv_bytes``: flip real K/V bytes of a slot, as a stray write or a bad copy would.

The sign bit of every element in the first 8 bytes of the slot's layer-0 K row is flipped: inside
the bytes the TAIL record's real-KV hash covers in every ``real_kv`` mode but ``none``, and the
values stay finite, so the model computes on silently wrong K. ``group: swa`` corrupts the row in
the SWA sub-pool (dsv4: the K-only latent), ``group: full`` the full pool's. With several ranks,
the slot is chosen from the scheduler's state (rank 0's) and the row flipped in ``target.rank``'s
shard only (its first layer: a pipeline rank's pool holds its own layers).
"""

from __future__ import annotations

import functools
import typing

import torch

from mock_models.engine.model_runner import ModelRunner
from mock_models.faults.targets import (
    FaultContext,
    on_target_rank,
    pick_cached_unused_slot,
    pick_live_slot,
    pick_post_forward_slot,
)

CORRUPTED_BYTES = 8


def corrupt_kv_bytes(context: FaultContext) -> str:
    engine, target = context.engine, context.target
    if target.slot == "cached_unused":
        ref = pick_cached_unused_slot(engine, target)
    elif target.slot == "post_forward":
        ref = pick_post_forward_slot(context)
    else:
        ref = pick_live_slot(context)
    row = ref.swa_slot if target.group == "swa" else ref.full_slot
    where = on_target_rank(context, functools.partial(flip_layer0_k_row, group=target.group, row=row))
    pool = "SWA" if target.group == "swa" else "full"
    return (
        f"flipped the sign bits of the first {CORRUPTED_BYTES} bytes of the {pool} pool's layer-0 K row "
        f"{row}{where}: {ref.describe()}"
    )


def flip_layer0_k_row(runner: ModelRunner, *, group: str | None, row: int) -> None:
    """On the rank whose runner this is (a job: it crosses to that rank's process by name)."""
    # The pools' own classes (MHA, SWA with its sub-pools, DSv4), not the KvPool protocol the
    # model reads through: a fault reaches for the buffers themselves.
    pool: typing.Any = runner.token_to_kv_pool
    buffer = pool.swa_kv_pool.k_buffer[0] if group == "swa" else getattr(pool, "full_kv_pool", pool).k_buffer[0]
    flip_sign_bits(buffer, row)


def flip_sign_bits(buffer: torch.Tensor, row: int) -> None:
    """Flip the top bit of each element in the first CORRUPTED_BYTES bytes of ``buffer[row]`` (little-endian)."""
    row_bytes = buffer[row].view(torch.uint8).reshape(-1)
    element = buffer.element_size()
    row_bytes[element - 1 : CORRUPTED_BYTES : element] ^= 0x80
