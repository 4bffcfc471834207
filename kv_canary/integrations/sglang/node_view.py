"""One view of an SGLang (0.5.23) radix-tree node, whichever tree it belongs to.

``RadixCache``'s ``TreeNode`` keeps ``key`` (a ``RadixKey``), ``value`` and ``lock_ref`` as
attributes; ``UnifiedTreeNode`` (``UnifiedRadixCache`` on its Python tree core) keeps the value
and lock of each component in ``component_data[ComponentType]``, and is an SWA tombstone when
its SWA component has no value. The view reads both in the canary's radix node shape
(``kv_canary.engine_protocols.RadixNode``): the FULL component's slots and lock, the key as
token ids. The canary's sweep walks unified trees through it, and the mock engine's SGLang
memory backend hands its nodes out as these views.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch


@functools.cache
def _component_type() -> Any:
    # SGLang is imported only once a unified node is read: this package must import without it.
    from sglang.srt.mem_cache.unified_cache.component_type import ComponentType

    return ComponentType


class SglangNodeView:
    """``node``: the SGLang node. ``view_of`` makes the views of its children and parent; pass a
    caching one where the same node must always be the same view (identity comparisons)."""

    __slots__ = ("_view_of", "node", "unified")

    def __init__(self, node: Any, *, view_of: Callable[[Any], SglangNodeView] | None = None) -> None:
        self.node = node
        self.unified: bool = hasattr(node, "component_data")
        self._view_of = view_of or SglangNodeView

    @property
    def key(self) -> list[int]:
        """One token id per slot: a ``RadixKey``'s length is its token count (EAGLE's bigram keys
        hold one raw token more than their entries; a ``limit`` caps ``token_ids``)."""
        key = self.node.key
        return [] if key is None else [int(token) for token in key.token_ids[: len(key)]]

    @property
    def value(self) -> torch.Tensor | None:
        """The full-pool slots, one per key token; None when the K/V is not on the device."""
        if self.unified:
            return self.node.component_data[_component_type().FULL].value  # type: ignore[no-any-return]
        return self.node.value  # type: ignore[no-any-return]

    @value.setter
    def value(self, value: torch.Tensor) -> None:
        if self.unified:
            self.node.component_data[_component_type().FULL].value = value
        else:
            self.node.value = value

    @property
    def lock_ref(self) -> int:
        if self.unified:
            return int(self.node.component_data[_component_type().FULL].lock_ref)
        return int(self.node.lock_ref)

    @property
    def swa_tombstone(self) -> bool:
        if not self.unified:
            return bool(getattr(self.node, "swa_tombstone", False))  # SWARadixCache's nodes have one
        components = _component_type()
        return components.SWA in self.node.component_types and self.node.component_data[components.SWA].value is None

    @property
    def children(self) -> dict[Any, SglangNodeView]:
        """Keyed as SGLang keys them (``RadixKey.child_key``)."""
        return {key: self._view_of(child) for key, child in self.node.children.items()}

    @property
    def parent(self) -> SglangNodeView | None:
        parent = self.node.parent
        return None if parent is None else self._view_of(parent)

    @property
    def id(self) -> int:
        return int(self.node.id)

    @property
    def last_access_time(self) -> float:
        return float(self.node.last_access_time)
