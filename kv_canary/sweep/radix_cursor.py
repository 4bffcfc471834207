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

Host cost: a node met for the first time costs its token ids' conversion (one host-to-device
copy per step for all such nodes) and the building of its segment; the node's segment is then
kept, keyed by the node, and reused at every later round for as long as the node, its key, its
value and its parent's value are the same objects (a split replaces the key and value of the
node it cuts, so a changed node is rebuilt). A step over nodes already met costs a dictionary
look-up and a few identity checks per node: the host time of a round grows with what changed in
the tree, plus about a microsecond per cached node. Segments of nodes not met during a whole
round (evicted) are forgotten a few at a time.
"""

from __future__ import annotations

import array
import dataclasses
import itertools
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


@dataclasses.dataclass(slots=True)
class _Known:
    """A node's segment, valid while the node still has these key, value and parent value objects."""

    node: RadixNode  # held, so that its id stays this node's while the entry lives
    key: object
    value: object
    pred_values: object
    swa_resident: bool
    segment: SweepSegment
    length: int
    round_index: int  # the last round that met it


@dataclasses.dataclass(slots=True)
class _Pending:
    """A node met for the first time in this slice: its segment waits for its token ids."""

    index: int  # its place in the slice
    node: RadixNode
    value: torch.Tensor
    length: int
    first_position: int
    pred_values: torch.Tensor | None
    swa_resident: bool


class RadixCursor:
    def __init__(self, *, device: torch.device) -> None:
        self._device = device
        self._root: RadixNode | None = None
        self._stack: list[_Frame] = []
        self._known: dict[int, _Known] = {}  # id(node) -> its segment, least recently met first
        self.rounds_started = 0

    @property
    def known_nodes(self) -> int:
        """Nodes whose segment is kept for the next rounds."""
        return len(self._known)

    def next_slice(self, cache: RadixTree, *, max_nodes: int, max_tokens: int) -> CursorSlice:
        root = cache.root_node
        if root is not self._root or not self._stack:
            self._start_round(root)
        known, round_index, stack = self._known, self.rounds_started, self._stack
        segments: list[SweepSegment | None] = []
        pending: list[_Pending] = []
        tokens = 0
        while stack and len(segments) < max_nodes and (tokens < max_tokens or not segments):
            frame = stack[-1]
            if frame.next_index == len(frame.keys):
                stack.pop()
                continue
            key = frame.keys[frame.next_index]
            frame.next_index += 1
            child = frame.parent.children.get(key)
            if child is None:
                continue  # evicted since the parent was listed, with everything below it
            value = child.value
            if value is None:
                continue  # its K/V is not on the device: skip it and everything below it
            pred_values = frame.parent.value if frame.has_slots else None
            swa_resident = not getattr(child, "swa_tombstone", False)
            entry = known.pop(id(child), None)
            if (
                entry is not None
                and entry.node is child
                and entry.value is value
                and entry.key is child.key
                and entry.pred_values is pred_values
                and entry.swa_resident is swa_resident
                and entry.segment.first_position == frame.depth
            ):
                segment = entry.segment
                entry.round_index = round_index
                known[id(child)] = entry  # reinserted: most recently met last
                segments.append(segment)
                length = entry.length
            else:
                length = _key_length(child.key)
                pending.append(self._pending(child, value, length, frame, pred_values, swa_resident, len(segments)))
                segments.append(None)
            tokens += length
            if child.children:
                stack.append(
                    _Frame(
                        parent=child,
                        keys=list(child.children),
                        next_index=0,
                        depth=frame.depth + length,
                        has_slots=True,
                    )
                )
        while stack and stack[-1].next_index == len(stack[-1].keys):
            stack.pop()  # so that a slice that listed the round's last node completes it
        self._build(pending, segments)
        self._forget_unmet(2 * max(len(segments), 1))
        return CursorSlice(segments=tuple(segments), round_completed=not stack)  # type: ignore[arg-type]

    def _start_round(self, root: RadixNode) -> None:
        self._root = root
        self._stack = [_Frame(parent=root, keys=list(root.children), next_index=0, depth=0, has_slots=False)]
        self.rounds_started += 1

    def _pending(
        self,
        node: RadixNode,
        value: torch.Tensor,
        length: int,
        frame: _Frame,
        pred_values: torch.Tensor | None,
        swa_resident: bool,
        index: int,
    ) -> _Pending:
        if value.dim() != 1 or value.shape[0] != length:
            raise ValueError(
                f"kv_canary radix sweep: a node at depth {frame.depth} has {length} key tokens but a value of "
                f"shape {tuple(value.shape)}; node.value must hold one slot per key token"
            )
        return _Pending(
            index=index,
            node=node,
            value=value,
            length=length,
            first_position=frame.depth,
            pred_values=pred_values,
            swa_resident=swa_resident,
        )

    def _build(self, pending: list[_Pending], segments: list[SweepSegment | None]) -> None:
        """The segments of the nodes met for the first time, their token ids in one host-to-device copy."""
        if not pending:
            return
        host = array.array("i")
        for node in pending:
            # array.array converts a list of ints about five times faster than torch.tensor does.
            host.extend(getattr(node.node.key, "token_ids", node.node.key)[: node.length])  # type: ignore[index]
        tokens = _to_device(torch.frombuffer(host, dtype=torch.int32) if host else _EMPTY_TOKENS, self._device)
        start = 0
        for node in pending:
            value = node.value
            if value.device != self._device or value.dtype not in (torch.int32, torch.int64) or value.stride(0) != 1:
                value = value.to(device=self._device, dtype=torch.int64).contiguous()
            segment = SweepSegment(
                slots=value,
                tokens=tokens[start : start + node.length],
                first_position=node.first_position,
                pred_values=node.pred_values,
                pred_index=0 if node.pred_values is None else node.pred_values.shape[0] - 1,
                swa_resident=node.swa_resident,
            )
            start += node.length
            segments[node.index] = segment
            self._known[id(node.node)] = _Known(
                node=node.node,
                key=node.node.key,
                value=node.value,
                pred_values=node.pred_values,
                swa_resident=node.swa_resident,
                segment=segment,
                length=node.length,
                round_index=self.rounds_started,
            )

    def _forget_unmet(self, limit: int) -> None:
        """Drop up to ``limit`` of the least recently met nodes not met in the last round or this one:
        gone from the tree (or cut by a split), they would otherwise be kept alive here."""
        stale = []
        for node_id, entry in itertools.islice(self._known.items(), limit):
            if entry.round_index >= self.rounds_started - 1:
                break
            stale.append(node_id)
        for node_id in stale:
            del self._known[node_id]


_EMPTY_TOKENS = torch.zeros(0, dtype=torch.int32, device="cpu")


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
