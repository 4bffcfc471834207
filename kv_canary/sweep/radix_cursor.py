"""A depth-first walk of a radix cache that resumes where it stopped: the sweep lists a bounded slice a step.

Like memory scrubbing, the sweep spreads one pass over the cache (a **round**) across many
steps, each listing at most ``max_nodes`` nodes and ``max_tokens`` cached tokens, so that the
host time a step costs does not grow with the cache. The tree changes between steps (inserts,
splits, evictions, a flush); the walk stays exact because it keeps no per-token state and no
node depth that a change could make stale:

* Pending work is kept as frames ``(parent, child keys, next index, depth)``, where ``depth``
  is the position of the parent's children's first token. A split never moves a token (the
  new node above a split child takes its first tokens, the child keeps the rest), so the
  depth stays right for as long as the parent is in the tree.
* A child is looked up by its key in the parent *when it is listed*, and its key, slots,
  predecessor (the parent's last slot) and SWA residency are read then, and verified by the
  launch that follows at once: a slot listed is never verified after the engine could have
  freed it. A child split since the frame was made is found as the new node that now holds
  that key (its depth is the same), and listing it pushes the old child as its child.
* Leaves are evicted one at a time, and a parent loses its children before it can be evicted:
  a key no longer in its parent means the subtree is gone, and it is skipped. A flush replaces
  the root, which restarts the round.

So a slot that stays cached from the start of a round to its end is verified in that round;
slots cached during a round may wait for the next. A round lasts about ``nodes / max_nodes``
steps (``tokens / max_tokens`` for caches of long nodes), a step runs every ``sweep_interval``
forwards.

Token ids are the one per-token cost on the host: each node key is converted once into a
device tensor and kept (by the key object's identity, keys being replaced, never edited, when
nodes split) for as long as the sweep keeps meeting it.
"""

from __future__ import annotations

import array
import dataclasses
from collections.abc import Hashable

import torch

from kv_canary.engine_protocols import RadixNode, RadixTree
from kv_canary.plans import SweepSegment


@dataclasses.dataclass(slots=True)
class _Frame:
    parent: RadixNode
    keys: list[Hashable]  # the parent's child keys when it was listed
    next_index: int
    depth: int  # position of the first token of each of the parent's children
    has_slots: bool  # False for the root: its children start sequences


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CursorSlice:
    segments: tuple[SweepSegment, ...]
    round_completed: bool  # this slice listed the last nodes of a round


class _KeyTokens:
    """Device int32 token ids per node key, kept while the sweep keeps meeting the key."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._entries: dict[int, tuple[object, torch.Tensor, int]] = {}  # id(key) -> (key, tokens, round)

    def lookup(self, key: object, length: int, round_index: int) -> torch.Tensor | None:
        entry = self._entries.pop(id(key), None)
        if entry is None or entry[0] is not key or entry[1].shape[0] != length:
            return None
        self._entries[id(key)] = (key, entry[1], round_index)  # reinserted: most recently used last
        return entry[1]

    def convert(self, keys: list[tuple[object, int]], round_index: int) -> list[torch.Tensor]:
        """The token ids of ``(key, length)``s met for the first time, in one host-to-device copy."""
        if not keys:
            return []
        host = array.array("i")
        for key, length in keys:
            # array.array converts a list of ints about five times faster than torch.tensor does.
            host.extend(getattr(key, "token_ids", key)[:length])  # type: ignore[index]
        tokens = _to_device(
            torch.frombuffer(host, dtype=torch.int32) if host else torch.zeros(0, dtype=torch.int32, device="cpu"),
            self._device,
        )
        converted = []
        start = 0
        for key, length in keys:
            view = tokens[start : start + length]
            self._entries[id(key)] = (key, view, round_index)
            converted.append(view)
            start += length
        return converted

    def forget_older_than(self, round_index: int, limit: int) -> None:
        """Drop up to ``limit`` of the least recently used keys not met since ``round_index`` began."""
        for key_id in list(self._entries)[:limit]:
            if self._entries[key_id][2] >= round_index:
                return
            del self._entries[key_id]


@dataclasses.dataclass(slots=True)
class _Listed:
    """A node listed in this slice, its token ids looked up or pending conversion."""

    value: torch.Tensor
    key: object
    length: int
    first_position: int
    pred_values: torch.Tensor | None
    swa_resident: bool
    tokens: torch.Tensor | None


class RadixCursor:
    def __init__(self, *, device: torch.device) -> None:
        self._device = device
        self._root: RadixNode | None = None
        self._stack: list[_Frame] = []
        self._tokens = _KeyTokens(device)
        self.rounds_started = 0

    def next_slice(self, cache: RadixTree, *, max_nodes: int, max_tokens: int) -> CursorSlice:
        root = cache.root_node
        if root is not self._root or not self._stack:
            self._start_round(root)
        listed: list[_Listed] = []
        tokens = 0
        while self._stack and len(listed) < max_nodes and (tokens < max_tokens or not listed):
            frame = self._stack[-1]
            if frame.next_index == len(frame.keys):
                self._stack.pop()
                continue
            key = frame.keys[frame.next_index]
            frame.next_index += 1
            child = frame.parent.children.get(key)
            if child is None:
                continue  # evicted since the parent was listed, with everything below it
            node = self._list(child, frame)
            if node is None:
                continue  # its K/V is not on the device: skip it and everything below it
            listed.append(node)
            tokens += node.length
            if child.children:
                self._stack.append(
                    _Frame(
                        parent=child,
                        keys=list(child.children),
                        next_index=0,
                        depth=frame.depth + node.length,
                        has_slots=True,
                    )
                )
        while self._stack and self._stack[-1].next_index == len(self._stack[-1].keys):
            self._stack.pop()  # so that a slice that listed the round's last node completes it
        segments = self._segments(listed)
        self._tokens.forget_older_than(self.rounds_started, 2 * max(len(segments), 1))
        return CursorSlice(segments=segments, round_completed=not self._stack)

    def _start_round(self, root: RadixNode) -> None:
        self._root = root
        self._stack = [_Frame(parent=root, keys=list(root.children), next_index=0, depth=0, has_slots=False)]
        self.rounds_started += 1

    def _list(self, node: RadixNode, frame: _Frame) -> _Listed | None:
        value = node.value
        if value is None:
            return None
        length = _key_length(node.key)
        if value.dim() != 1 or value.shape[0] != length:
            raise ValueError(
                f"kv_canary radix sweep: a node at depth {frame.depth} has {length} key tokens but a value of "
                f"shape {tuple(value.shape)}; node.value must hold one slot per key token"
            )
        if value.device != self._device or value.dtype not in (torch.int32, torch.int64) or value.stride(0) != 1:
            value = value.to(device=self._device, dtype=torch.int64).contiguous()
        return _Listed(
            value=value,
            key=node.key,
            length=length,
            first_position=frame.depth,
            pred_values=frame.parent.value if frame.has_slots else None,
            swa_resident=not getattr(node, "swa_tombstone", False),
            tokens=self._tokens.lookup(node.key, length, self.rounds_started),
        )

    def _segments(self, listed: list[_Listed]) -> tuple[SweepSegment, ...]:
        missing = [node for node in listed if node.tokens is None]
        converted = self._tokens.convert([(node.key, node.length) for node in missing], self.rounds_started)
        for node, tokens in zip(missing, converted, strict=True):
            node.tokens = tokens
        return tuple(
            SweepSegment(
                slots=node.value,
                tokens=node.tokens,
                first_position=node.first_position,
                pred_values=node.pred_values,
                pred_index=0 if node.pred_values is None else node.pred_values.shape[0] - 1,
                swa_resident=node.swa_resident,
            )
            for node in listed
        )


def _key_length(key: object) -> int:
    """Tokens of a node key, one per slot: a sequence of ids, or an object with ``token_ids``, whose
    ``len()`` (when it has one) counts them (SGLang's ``RadixKey`` may hold more raw ids)."""
    token_ids = getattr(key, "token_ids", None)
    if token_ids is None or hasattr(type(key), "__len__"):
        return len(key)  # type: ignore[arg-type]
    return len(token_ids)


def _to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    # A pageable host-to-device copy waits for the compute stream; a pinned one does not, so the
    # sweep never stalls the engine. The caching host allocator keeps the pinned buffer alive
    # until the copy has run.
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.clone().to(device)
