"""What the canary's kernels consume: the torch reference's per-forward plans and the sweep's slices.

The Triton kernels derive a forward's entries inside their launches (``kernels/forward_triton.py``);
the torch reference (``kernels/forward_reference.py``) first fills these fixed-capacity plans on
device without a host sync, so that it too can be captured in a CUDA graph; entries past
``num_valid`` / ``num_requests`` are ignored. The sweep verifies ``SweepSlice``s, listed between
forwards by ``sweep/radix_cursor.py``.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from kv_canary.engine_protocols import RadixWalk

# prev_slot values besides a real slot index (> 0)
PREV_SEQUENCE_START = 0  # the slot holds position 0: its prev_hash must be CHAIN_ANCHOR
PREV_UNKNOWN = -1  # predecessor not resident (slid out of the SWA window): skip the chain check
TOKEN_UNKNOWN = -1
# A verify entry expecting this position is padding and skipped. Every other valid entry is verified,
# slot 0 included: that is the engine's padding slot, never written, so an entry that reads it (an
# SWA window position mapped to 0, a req_to_token entry never set) always fails.
PADDING_POSITION = -1
PADDING_ROW = 0  # row 0 of req_to_token: what padded batch entries point at; planned as padding


def _int32(n: int, device: torch.device | str, fill: int = 0) -> torch.Tensor:
    return torch.full((n,), fill, dtype=torch.int32, device=device)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class VerifyPlan:
    """One entry per slot to verify; entries expecting ``PADDING_POSITION`` are skipped."""

    slot_indices: torch.Tensor  # int32 [capacity]
    prev_slot_indices: torch.Tensor  # int32 [capacity]: a slot, PREV_SEQUENCE_START or PREV_UNKNOWN
    expected_positions: torch.Tensor  # int32 [capacity]: PADDING_POSITION = skip
    expected_tokens: torch.Tensor  # int32 [capacity]: TOKEN_UNKNOWN where not known
    num_valid: torch.Tensor  # int32 [1]

    @classmethod
    def allocate(cls, capacity: int, device: torch.device | str) -> VerifyPlan:
        return cls(
            slot_indices=_int32(capacity, device),
            prev_slot_indices=_int32(capacity, device),
            expected_positions=_int32(capacity, device),
            expected_tokens=_int32(capacity, device, TOKEN_UNKNOWN),
            num_valid=_int32(1, device),
        )

    @property
    def capacity(self) -> int:
        return self.slot_indices.shape[0]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class WritePlan:
    """The slots a forward writes, grouped in runs per request so that their chain can be scanned.

    Request ``r`` owns entries ``[entry_starts[r], entry_starts[r] + entry_counts[r])``, in
    position order; the first entry chains from ``pred_slots[r]``.
    """

    entry_starts: torch.Tensor  # int32 [request_capacity]
    entry_counts: torch.Tensor  # int32 [request_capacity]
    pred_slots: torch.Tensor  # int32 [request_capacity]: a slot, PREV_SEQUENCE_START or PREV_UNKNOWN
    num_requests: torch.Tensor  # int32 [1]
    slot_indices: torch.Tensor  # int32 [capacity]: 0 = do not store (padding)
    tokens: torch.Tensor  # int32 [capacity]: the token the engine writes
    positions: torch.Tensor  # int32 [capacity]: the position the engine writes
    expected_tokens: torch.Tensor  # int32 [capacity]: what the engine sampled; TOKEN_UNKNOWN if not known
    expected_positions: torch.Tensor  # int32 [capacity]: prefix length + offset in the run

    @classmethod
    def allocate(cls, *, capacity: int, request_capacity: int, device: torch.device | str) -> WritePlan:
        return cls(
            entry_starts=_int32(request_capacity, device),
            entry_counts=_int32(request_capacity, device),
            pred_slots=_int32(request_capacity, device),
            num_requests=_int32(1, device),
            slot_indices=_int32(capacity, device),
            tokens=_int32(capacity, device),
            positions=_int32(capacity, device),
            expected_tokens=_int32(capacity, device, TOKEN_UNKNOWN),
            expected_positions=_int32(capacity, device),
        )

    @property
    def capacity(self) -> int:
        return self.slot_indices.shape[0]

    @property
    def request_capacity(self) -> int:
        return self.entry_starts.shape[0]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SweepSegment:
    """A run of cached tokens at consecutive positions (a radix node), read in place from the cache.

    Token ``i`` sits at ``first_position + i`` in slot ``slots[i]``; its chain predecessor is
    ``slots[i - 1]``, and for ``i = 0`` the slot ``pred_values[pred_index]`` (the parent node's last
    slot), or a sequence start when ``pred_values`` is None.
    """

    slots: torch.Tensor  # int32 or int64 [length], contiguous, on the canary's device
    tokens: torch.Tensor | None  # int32 [length] token ids; None where unknown
    first_position: int
    pred_values: torch.Tensor | None
    pred_index: int
    swa_resident: bool  # False: tombstoned, SWA groups skip it
    # The segment's row of the Triton sweep's segment table (``SegmentField`` order), read once here:
    # the radix cursor keeps a node's segment from round to round, so a step only copies rows.
    table_row: tuple[int, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pred = self.pred_values
        row = (
            self.slots.data_ptr(),
            self.slots.element_size() // 4,
            0 if self.tokens is None else self.tokens.data_ptr(),
            self.slots.shape[0],
            self.first_position,
            0 if pred is None else pred.data_ptr() + self.pred_index * pred.element_size(),
            1 if pred is None else pred.element_size() // 4,
            int(self.swa_resident),
        )
        object.__setattr__(self, "table_row", row)

    @property
    def length(self) -> int:
        return self.slots.shape[0]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SweepSlice:
    """What one sweep step verifies: radix-node segments, or the flat walks of a self-walking cache."""

    segments: tuple[SweepSegment, ...] = ()
    walk: RadixWalk | None = None  # a self-walking cache's tokens, for FULL groups
    swa_walk: RadixWalk | None = None  # its SWA-resident tokens, for SWA groups

    @property
    def is_walked(self) -> bool:
        return self.walk is not None or self.swa_walk is not None

    @property
    def num_tokens(self) -> int:
        walks = [walk.num_tokens for walk in (self.walk, self.swa_walk) if walk is not None]
        return max(walks) if walks else sum(segment.length for segment in self.segments)


class SegmentField(enum.IntEnum):
    """Columns of the int64 segment table the Triton sweep kernel reads (addresses are data_ptrs)."""

    SLOTS = 0  # address of the first slot value
    SLOT_STRIDE = 1  # int32 words from one slot value to the next: 1 (int32 slots) or 2 (int64)
    TOKENS = 2  # address of the int32 token ids, 0 when unknown
    LENGTH = 3
    FIRST_POSITION = 4
    PRED = 5  # address of the predecessor's slot value, 0 at a sequence start
    PRED_STRIDE = 6  # 1 or 2, as SLOT_STRIDE, for the tensor PRED points into
    SWA_RESIDENT = 7  # 0: SWA groups skip the segment
