"""The model modes, and what each one's KV layout holds: the facts every mode-dependent rule reads."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

ModelMode = Literal["mha", "swa", "dsv4"]
MODEL_MODES: tuple[ModelMode, ...] = typing.get_args(ModelMode)

PoolGroup = Literal["full", "swa"]
POOL_GROUPS: tuple[PoolGroup, ...] = typing.get_args(PoolGroup)
KvHalf = Literal["k", "v"]

DSV4_COMPRESS_RATIO = 4  # tokens a dsv4 compressed-pool entry pools


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ModeFacts:
    has_swa_pool: bool  # sliding-window layers, in an SWA sub-pool behind full_to_swa_index_mapping
    guarded: frozenset[tuple[PoolGroup, KvHalf]]  # (pool group, K/V half) pairs the canary guards
    compress_ratio: int | None = None  # a compressed pool pools this many tokens per entry

    @property
    def guarded_groups(self) -> tuple[PoolGroup, ...]:
        """The groups whose slots hold per-slot K/V and canary records, FULL first."""
        return tuple(group for group in POOL_GROUPS if any(guarded == group for guarded, _ in self.guarded))

    @property
    def default_fault_group(self) -> PoolGroup:
        """The group a fault lands in when its target names none: FULL where the canary guards it."""
        return self.guarded_groups[0]


MODES: Mapping[ModelMode, ModeFacts] = MappingProxyType(
    {
        "mha": ModeFacts(has_swa_pool=False, guarded=frozenset({("full", "k"), ("full", "v")})),
        "swa": ModeFacts(
            has_swa_pool=True,
            guarded=frozenset({(group, half) for group in POOL_GROUPS for half in typing.get_args(KvHalf)}),
        ),
        # DSv4's SWA sub-pool holds K only (a latent); its full-pool slots index the compressed
        # pool, which holds no per-slot K/V and is not guarded.
        "dsv4": ModeFacts(has_swa_pool=True, guarded=frozenset({("swa", "k")}), compress_ratio=DSV4_COMPRESS_RATIO),
    }
)


def model_mode(name: str) -> ModelMode:
    """``name`` as a ``ModelMode``; ValueError naming the modes if it is none of them."""
    for mode in MODEL_MODES:
        if mode == name:
            return mode
    raise ValueError(f"{name!r} is not a model mode; use one of {', '.join(MODEL_MODES)}")
