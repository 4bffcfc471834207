"""An install's pool groups as the Triton kernels take them, checked once at install."""

from __future__ import annotations

import dataclasses

import torch

from kv_canary.buffer_group import CanaryBufferGroup
from kv_canary.errors import KvCanaryError
from kv_canary.kernels.layout_triton import launch_tag_base
from kv_canary.kernels.real_kv_table import RealKvTable
from kv_canary.launch_tags import KvHalf, Phase, PoolGroupKind

_LAYOUTS = ((PoolGroupKind.FULL,), (PoolGroupKind.SWA,), (PoolGroupKind.FULL, PoolGroupKind.SWA))
_HALVES = ((KvHalf.K,), (KvHalf.K, KvHalf.V))


class UnsupportedGroupLayoutError(KvCanaryError, ValueError):
    """The install's pool groups are not a layout the Triton kernels handle."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class GroupLayout:
    """A FULL group, an SWA group, or both (in that order), guarding the same K/V halves.

    Buffers a layout lacks (a second group, a V half) are given as ``placeholder``, which no
    launch reads; the kernels unroll over ``len(groups)`` groups and ``num_halves`` halves.
    """

    groups: tuple[CanaryBufferGroup, ...]
    num_halves: int
    first_group_swa: bool
    full_to_swa: torch.Tensor  # the SWA group's map, the placeholder without one
    window: int  # the SWA group's window, 0 without one
    real_kv: RealKvTable
    placeholder: torch.Tensor

    @classmethod
    def of(cls, groups: tuple[CanaryBufferGroup, ...], placeholder: torch.Tensor) -> GroupLayout:
        kinds = tuple(group.kind for group in groups)
        halves = {tuple(group.halves) for group in groups}
        if kinds not in _LAYOUTS or len(halves) != 1 or next(iter(halves)) not in _HALVES:
            raise UnsupportedGroupLayoutError(
                f"kv_canary: the Triton kernels guard a FULL group, an SWA group, or both (in that order), with "
                f"the same K/V halves each; got groups {[kind.value for kind in kinds]} with halves "
                f"{[[half.value for half in group.halves] for group in groups]}. Use KV_CANARY_BACKEND=torch"
            )
        full_to_swa, window = placeholder, 0
        for group in groups:
            if group.full_to_swa_index_mapping is not None:
                full_to_swa, window = group.full_to_swa_index_mapping, group.window or 0
        return cls(
            groups=groups,
            num_halves=len(next(iter(halves))),
            first_group_swa=kinds[0] is PoolGroupKind.SWA,
            full_to_swa=full_to_swa,
            window=window,
            real_kv=RealKvTable.of(groups, placeholder.device),
            placeholder=placeholder,
        )

    def records(self, phase: Phase) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(group 0 K, group 0 V, group 1 K, group 1 V) records of ``phase``."""
        k0, v0 = self._records(0, phase)
        k1, v1 = self._records(1, phase)
        return k0, v0, k1, v1

    def tags(self, phase: Phase) -> tuple[int, int]:
        """The launch tags of the K halves of groups 0 and 1 in ``phase`` (0 where a group is absent)."""
        tags = [launch_tag_base(phase, group.kind) for group in self.groups]
        return tags[0], (tags[1] if len(tags) > 1 else 0)

    def _records(self, index: int, phase: Phase) -> tuple[torch.Tensor, torch.Tensor]:
        if index >= len(self.groups):
            return self.placeholder, self.placeholder
        group = self.groups[index]
        v = group.records(phase, KvHalf.V) if KvHalf.V in group.halves else self.placeholder
        return group.records(phase, KvHalf.K), v
