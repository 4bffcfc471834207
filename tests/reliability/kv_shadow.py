"""An oracle, independent of the canary's kernels, of whether a forward reads what it should.

``KvShadow`` wraps the engine model's ``forward`` (outside the canary's wrapper) and keeps, for
every guarded slot, *what was written there*: the position and a hash of the whole token
sequence up to it (its identity), plus a copy of the slot's canary records and hashed K/V
words as the forward left them. At every forward it then judges, slot by slot, what the canary
is contracted to verify:

* the prefix each request reads (FULL groups: positions ``[0, P)``; SWA groups: the window
  ``[P - window, P)`` through ``full_to_swa_index_mapping``),
* and, at sweep forwards, every slot the radix cache holds,

and records an ``ReadEvent`` for each read that is **misaddressed** (the slot holds another
position or another token sequence), **tampered** (its records or hashed K/V bytes changed since
the forward that wrote them), **not resident** (an in-window position mapped to SWA slot 0), or
for a write that **fed a token** other than the recorded one. A clean engine produces none; after
a fault, the first event is the forward by which the canary must have reported a violation.

What it deliberately does not judge: unguarded state (DSv4's compressed pool, K/V bytes past the
hashed prefix in ``real_kv=partial``, everything with ``real_kv=none`` but the records), and
a forward's reads of the slots it writes itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from kv_canary.launch_tags import PoolGroupKind
from kv_canary.records import RecordWord
from mock_models.config import ModelMode
from mock_models.engine.engine import Engine

FULL, SWA = PoolGroupKind.FULL, PoolGroupKind.SWA
Identity = tuple[int, int]  # (position, hash of the token sequence [0, position])
_MAX_EVENTS = 64


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ReadEvent:
    forward: int  # the forward (1-based, the canary's step) that read or wrote it
    kind: str  # misaddressed | tampered | not_resident | fed_token, prefixed "sweep_" for the sweep
    group: str
    slot: int  # the group's own slot index (SWA groups: the SWA slot)
    position: int
    detail: str = ""


def sequence_hashes(tokens: Sequence[int]) -> list[int]:
    """hashes[p] identifies tokens[0..p]: equal sequences, equal hashes; any change, another hash."""
    hashes, value = [], 0x5EED
    for token in tokens:
        value = hash((value, int(token)))
        hashes.append(value)
    return hashes


@dataclasses.dataclass(kw_only=True, slots=True)
class _Mirror:
    """A guarded buffer and the words of it the canary compares, as last written by a forward."""

    actual: torch.Tensor  # int64 [slots, words], aliasing the engine's buffer
    copy: torch.Tensor
    words: slice


class KvShadow:
    def __init__(self, engine: Engine) -> None:
        if engine.canary is None:
            raise ValueError("KvShadow judges the canary's guarded state: install the canary")
        self.engine = engine
        mode = engine.config.model_mode
        self.groups = tuple(group.kind for group in engine.canary.groups)
        assert (FULL in self.groups) == (mode is not ModelMode.DSV4)
        assert (SWA in self.groups) == (mode is not ModelMode.MHA)
        self.window = engine.config.swa_window
        self.identity: dict[PoolGroupKind, dict[int, Identity]] = {kind: {} for kind in self.groups}
        self.mirrors: dict[PoolGroupKind, list[_Mirror]] = {kind: [] for kind in self.groups}
        for group in engine.canary.groups:
            for buffers in group.halves.values():
                real_kv = buffers.real_kv
                for records, words in (
                    (buffers.head, slice(0, RecordWord.REAL_KV_HASH)),
                    (buffers.tail, slice(0, RecordWord.REAL_KV_HASH + (real_kv is not None))),
                ):
                    self.mirrors[group.kind].append(_Mirror(actual=records, copy=records.clone(), words=words))
                if real_kv is not None:
                    for layer in real_kv.layer_words:
                        self.mirrors[group.kind].append(
                            _Mirror(actual=layer, copy=layer.clone(), words=slice(0, real_kv.hashed_words))
                        )
        self.events: list[ReadEvent] = []
        self.num_events = 0
        self.reads_checked = 0
        self._sweep_interval = engine.canary.config.sweep_interval
        self._wrap(engine)

    @property
    def first_event(self) -> ReadEvent | None:
        return self.events[0] if self.events else None

    def events_since(self, forward: int) -> list[ReadEvent]:
        return [event for event in self.events if event.forward > forward]

    # -- the wrapper ------------------------------------------------------------------------------

    def _wrap(self, engine: Engine) -> None:
        inner = engine.model.forward

        def forward(input_ids, positions, forward_batch):
            written = self._before_forward(forward_batch)
            output = inner(input_ids, positions, forward_batch)
            self._commit(written)
            return output

        engine.model.forward = forward

    def _mapping(self) -> torch.Tensor | None:
        allocator = self.engine.swa_allocator
        return None if allocator is None else allocator.full_to_swa_index_mapping

    def _before_forward(self, batch) -> dict[PoolGroupKind, list[int]]:
        engine = self.engine
        step = engine.forward_count + 1
        mapping = self._mapping()
        # Overlap scheduling: a request the previous results finished is still computed (its overrun).
        by_row = {req.req_pool_idx: req for req in [*engine.scheduler.running, *engine.scheduler.retiring]}
        out_cache_loc = batch.out_cache_loc.tolist()
        new_swa = mapping[batch.out_cache_loc].tolist() if mapping is not None else []
        written: dict[PoolGroupKind, list[int]] = {kind: [] for kind in self.groups}
        requests = []
        for row, prefix, count, start in zip(
            batch.req_pool_indices_cpu,
            batch.extend_prefix_lens_cpu,
            batch.extend_seq_lens_cpu,
            batch.extend_start_loc_cpu,
            strict=True,
        ):
            req = by_row[row]
            requests.append((req, prefix))
            recorded = req.token_ids
            fed_hashes = sequence_hashes(req.fill_ids[: prefix + count])
            for offset in range(count):
                position = prefix + offset
                identity = (position, fed_hashes[position])
                slots = {FULL: out_cache_loc[start + offset]}
                if mapping is not None:
                    slots[SWA] = new_swa[start + offset]
                for kind in self.groups:
                    self.identity[kind][slots[kind]] = identity
                    written[kind].append(slots[kind])
                if req.fill_ids[position] != recorded[position]:
                    self._record(
                        ReadEvent(
                            forward=step,
                            kind="fed_token",
                            group=self.groups[0].value,
                            slot=slots[self.groups[0]],
                            position=position,
                            detail=f"fed {req.fill_ids[position]}, recorded {recorded[position]}",
                        )
                    )
        # The model writes this forward's K/V before it reads, so reads are judged after the writes.
        for req, prefix in requests:
            self._check_prefix_reads(step, req, prefix, mapping, written)
        if self._sweep_interval and step % self._sweep_interval == 0:
            self._check_sweep(step, mapping, written)
        return written

    def _check_prefix_reads(
        self, step: int, req, prefix: int, mapping: torch.Tensor | None, written: dict[PoolGroupKind, list[int]]
    ) -> None:
        if prefix == 0:
            return
        expected = sequence_hashes(req.token_ids[:prefix])
        full_slots = self.engine.req_to_token_pool.req_to_token[req.req_pool_idx, :prefix].long()
        reads: dict[PoolGroupKind, list[tuple[int, int]]] = {}
        if FULL in self.groups:
            reads[FULL] = list(enumerate(full_slots.tolist()))
        if SWA in self.groups:
            assert mapping is not None  # an SWA group comes with its map
            first = max(0, prefix - self.window)
            swa_slots = mapping[full_slots[first:]].tolist()
            reads[SWA] = [(first + index, slot) for index, slot in enumerate(swa_slots)]
        for kind, entries in reads.items():
            self._judge(
                step,
                kind,
                [(slot, (position, expected[position])) for position, slot in entries],
                written[kind],
                prefix_kind="",
            )

    def _check_sweep(self, step: int, mapping: torch.Tensor | None, written: dict[PoolGroupKind, list[int]]) -> None:
        """The sweep after this forward verifies every cached slot (SWA: non-tombstoned nodes' resident ones)."""
        entries: dict[PoolGroupKind, list[tuple[int, Identity]]] = {kind: [] for kind in self.groups}
        for node, position, hashes in _walk_paths(self.engine.radix_cache):
            full_slots = node.value.tolist()
            swa_slots = mapping[node.value].tolist() if mapping is not None else []
            for index, full_slot in enumerate(full_slots):
                identity = (position + index, hashes[index])
                if FULL in self.groups:
                    entries[FULL].append((full_slot, identity))
                if SWA in self.groups and not node.swa_tombstone and swa_slots[index] != 0:
                    entries[SWA].append((swa_slots[index], identity))
        for kind, judged in entries.items():
            self._judge(step, kind, judged, [], prefix_kind="sweep_")

    def _judge(
        self,
        step: int,
        kind: PoolGroupKind,
        entries: list[tuple[int, Identity]],
        written: list[int],
        *,
        prefix_kind: str,
    ) -> None:
        self.reads_checked += len(entries)
        fresh = set(written)
        identities = self.identity[kind]
        to_compare = []
        for slot, identity in entries:
            if slot == 0:
                self._record(
                    ReadEvent(
                        forward=step,
                        kind=prefix_kind + "not_resident",
                        group=kind.value,
                        slot=0,
                        position=identity[0],
                        detail="in-window position maps to SWA slot 0",
                    )
                )
            elif identities.get(slot) != identity:
                held = identities.get(slot)
                self._record(
                    ReadEvent(
                        forward=step,
                        kind=prefix_kind + "misaddressed",
                        group=kind.value,
                        slot=slot,
                        position=identity[0],
                        detail=f"holds position {held[0] if held else None}",
                    )
                )
            elif slot not in fresh:
                to_compare.append((slot, identity[0]))
        if to_compare:
            for slot, position in self._tampered(kind, to_compare):
                self._record(
                    ReadEvent(
                        forward=step,
                        kind=prefix_kind + "tampered",
                        group=kind.value,
                        slot=slot,
                        position=position,
                        detail="records or hashed K/V changed since written",
                    )
                )

    def _tampered(self, kind: PoolGroupKind, entries: list[tuple[int, int]]) -> Iterable[tuple[int, int]]:
        slots = torch.tensor([slot for slot, _ in entries], dtype=torch.int64)
        changed = torch.zeros(len(entries), dtype=torch.bool)
        for mirror in self.mirrors[kind]:
            changed |= (mirror.actual[slots, mirror.words] != mirror.copy[slots, mirror.words]).any(dim=1)
        return [entries[index] for index in changed.nonzero().flatten().tolist()]

    def _commit(self, written: dict[PoolGroupKind, list[int]]) -> None:
        """After the forward (TAIL records and K/V written): remember what its new slots hold."""
        for kind, slots in written.items():
            if not slots:
                continue
            index = torch.tensor(slots, dtype=torch.int64)
            for mirror in self.mirrors[kind]:
                mirror.copy[index] = mirror.actual[index]

    def _record(self, event: ReadEvent) -> None:
        self.num_events += 1
        if len(self.events) < _MAX_EVENTS:
            self.events.append(event)


def _walk_paths(cache) -> Iterable[tuple[Any, int, list[int]]]:
    """(node, position of its first token, sequence hash at each of its tokens), parents first."""
    stack = [(child, 0, 0x5EED) for child in cache.root_node.children.values()]
    while stack:
        node, position, value = stack.pop()
        hashes = []
        for token in node.key:
            value = hash((value, int(token)))
            hashes.append(value)
        yield node, position, hashes
        stack.extend((child, position + len(node.key), value) for child in node.children.values())
