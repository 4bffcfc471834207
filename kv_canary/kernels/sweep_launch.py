"""Launch the sweep's Triton kernel over a slice: one launch for every group, K/V half and phase.

A slice of radix-node segments becomes an int64 segment table built on the host (a few ints and
addresses per node, no per-token work) and copied to the device without a sync; the kernel then
reads each node's slots, token ids and predecessor in place. A self-walking cache's flat walk is
one segment with explicit positions and predecessors, launched once per group when the SWA groups
walk only the SWA-resident tokens.
"""

from __future__ import annotations

import array
import dataclasses

import torch

from kv_canary.device_state import CanaryDeviceState
from kv_canary.engine_protocols import RadixWalk
from kv_canary.kernels.group_layout import GroupLayout
from kv_canary.kernels.launch_cache import LaunchCache
from kv_canary.kernels.settings import KernelSettings
from kv_canary.kernels.sweep_triton import _sweep_kernel
from kv_canary.launch_tags import Phase, PoolGroupKind
from kv_canary.plans import SegmentField, SweepSegment, SweepSlice

_MIN_BLOCK, _MAX_BLOCK = 32, 256
_BLOCK_WITH_REAL_KV, _WARPS_WITH_REAL_KV = 64, 2
_TARGET_PROGRAMS = 2048
_LAUNCHES = LaunchCache(_sweep_kernel)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PreparedSegments:
    table: torch.Tensor  # int64 [segments, len(SegmentField)] on the device
    num_segments: int
    longest: int
    num_tokens: int


class TritonSweep:
    def __init__(self, *, layout: GroupLayout, state: CanaryDeviceState, settings: KernelSettings) -> None:
        self._layout = layout
        self._state = state
        self._settings = settings
        self._device = state.step.device
        head, tail = layout.records(Phase.HEAD), layout.records(Phase.TAIL)
        # The canary's own buffers, in the kernel's parameter order: the SWA map, then group 0's HEAD K,
        # HEAD V, TAIL K, TAIL V records, group 1's, the real-K/V table and the state.
        self._static = (
            layout.full_to_swa,
            head[0],
            head[1],
            tail[0],
            tail[1],
            head[2],
            head[3],
            tail[2],
            tail[3],
            layout.real_kv.table,
            state.ring.rows,
            state.ring.write_index,
            state.kernel_run_counters,
            state.slot_run_counters,
            state.step,
        )

    def verify(self, sweep: SweepSlice, *, verify: object = None) -> None:
        """Verify a slice in one launch (a self-walking cache's walks: one per group)."""
        if not sweep.is_walked:
            self.launch_segments(self.prepare_segments(sweep.segments))
            return
        for index, group in enumerate(self._layout.groups):
            walk = sweep.swa_walk if group.kind is PoolGroupKind.SWA else sweep.walk
            if walk is None:
                raise ValueError(f"kv_canary: the sweep slice has no walk for the {group.kind.value} group")
            # The table holds only addresses: the tensors it points into live until the launch is made
            # (after that the caching allocator keeps their memory for the stream until the kernel ran).
            table, (_, _, positions, pred_slots) = _walk_table(walk, self._device)
            self._launch(
                table,
                1,
                walk.num_tokens,
                walk.num_tokens,
                groups=(index == 0, index == 1),
                explicit=(positions, pred_slots),
            )

    def prepare_segments(self, segments: tuple[SweepSegment, ...]) -> PreparedSegments:
        """The host's part of a segment launch: the table, on its way to the device."""
        table, longest, tokens = segment_table(segments, self._device)
        return PreparedSegments(table=table, num_segments=len(segments) or 1, longest=longest, num_tokens=tokens)

    def launch_segments(self, prepared: PreparedSegments) -> None:
        """The device's part; the segments' tensors must still be alive when this is called."""
        self._launch(prepared.table, prepared.num_segments, prepared.longest, prepared.num_tokens, groups=(True, True))

    def _launch(
        self,
        table: torch.Tensor,
        num_segments: int,
        longest: int,
        num_tokens: int,
        *,
        groups: tuple[bool, bool],
        explicit: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        mean = num_tokens // max(num_segments, 1)
        block = min(_MAX_BLOCK, max(_MIN_BLOCK, 1 << (max(mean, 1) - 1).bit_length()))
        warps = max(1, min(8, block // 32))
        layout = self._layout
        if layout.real_kv.hashes:
            block, warps = min(block, _BLOCK_WITH_REAL_KV), min(warps, _WARPS_WITH_REAL_KV)
        blocks = -(-max(longest, 1) // block)
        splits = blocks if explicit is not None else max(1, min(blocks, _TARGET_PROGRAMS // num_segments))
        positions, pred_slots = explicit if explicit is not None else (layout.placeholder, layout.placeholder)
        settings = self._settings
        tag_0, tag_1 = layout.tags(Phase.SWEEP)
        _LAUNCHES.launch(
            (num_segments * splits,),
            (table, positions, pred_slots),
            self._static,
            (self._state.ring.capacity, splits, num_tokens if explicit is not None else 0),
            num_warps=warps,
            constexprs={
                "EXPLICIT": explicit is not None,
                "VERIFY_GROUP_0": groups[0],
                "VERIFY_GROUP_1": groups[1] and len(layout.groups) == 2,
                "GROUP_0_SWA": layout.first_group_swa,
                "NUM_HALVES": layout.num_halves,
                "TAG_0": tag_0,
                "TAG_1": tag_1,
                "CHECK_TOKENS": settings.check_tokens,
                "RECORD_VIOLATIONS": settings.record_violations,
                "HASH_REAL_KV": layout.real_kv.hashes,
                "LAYER_BLOCK": layout.real_kv.layer_block,
                "WORD_CHUNK": layout.real_kv.word_chunk,
                "BLOCK": block,
            },
        )


def _stride(values: torch.Tensor) -> int:
    """int32 words from one slot value to the next."""
    return values.element_size() // 4


def segment_table(segments: tuple[SweepSegment, ...], device: torch.device) -> tuple[torch.Tensor, int, int]:
    """(the table on the device, the longest segment, tokens in all): each segment's row was read when
    the segment was made, so this only copies ints."""
    host = array.array("q")
    longest = tokens = 0
    for segment in segments:
        row = segment.table_row
        host.extend(row)
        length = row[SegmentField.LENGTH]
        longest = max(longest, length)
        tokens += length
    if not segments:
        host.extend((0,) * len(SegmentField))
    table = torch.frombuffer(host, dtype=torch.int64).view(-1, len(SegmentField))
    return _on_device(table, device), longest, tokens


def _walk_table(walk: RadixWalk, device: torch.device) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """A one-segment table over a flat walk, and (slots, tokens, positions, predecessors) it refers to."""
    slots = walk.slots.to(device=device, dtype=torch.int64).contiguous()
    tokens = walk.tokens.to(device=device, dtype=torch.int32).contiguous()
    row = [0] * len(SegmentField)
    row[SegmentField.SLOTS] = slots.data_ptr()
    row[SegmentField.SLOT_STRIDE] = _stride(slots)
    row[SegmentField.TOKENS] = tokens.data_ptr()
    row[SegmentField.LENGTH] = walk.num_tokens
    row[SegmentField.PRED_STRIDE] = 2
    row[SegmentField.SWA_RESIDENT] = 1
    positions = walk.positions.to(device=device, dtype=torch.int64).contiguous()
    pred_slots = walk.prev_slots.to(device=device, dtype=torch.int64).contiguous()
    return _on_device(torch.tensor([row], dtype=torch.int64, device="cpu"), device), (
        slots,
        tokens,
        positions,
        pred_slots,
    )


def _on_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    # A pageable host-to-device copy waits for the compute stream; a pinned one does not, so the
    # sweep never stalls the engine. The caching host allocator keeps the pinned buffer alive
    # until the copy has run.
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.clone()  # not a view of a host buffer its caller may drop
