"""A hand-built radix cache in SGLang's node shape, for the walker and sweep tests."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(eq=False)
class RadixKey:
    """SGLang-style key object: the walker reads ``token_ids``."""

    token_ids: list[int]


@dataclasses.dataclass(eq=False)
class FakeRadixNode:
    key: list[int] | RadixKey
    value: torch.Tensor | None  # None: its K/V left the device
    children: dict[object, FakeRadixNode] = dataclasses.field(default_factory=dict)
    lock_ref: int = 0
    swa_tombstone: bool = False


class FakeRadixCache:
    def __init__(self) -> None:
        self.root_node = FakeRadixNode(key=[], value=torch.zeros(0, dtype=torch.int64), lock_ref=1)

    def add(
        self,
        parent: FakeRadixNode | None,
        tokens: list[int],
        slots: list[int] | torch.Tensor,
        *,
        lock_ref: int = 0,
        swa_tombstone: bool = False,
        key_object: bool = False,
    ) -> FakeRadixNode:
        """Hang a node under ``parent`` (the root when None) and return it."""
        parent = self.root_node if parent is None else parent
        value = torch.as_tensor(slots).to(torch.int64)
        node = FakeRadixNode(
            key=RadixKey(list(tokens)) if key_object else list(tokens),
            value=value,
            lock_ref=lock_ref,
            swa_tombstone=swa_tombstone,
        )
        parent.children[tuple(tokens[:1])] = node
        return node
