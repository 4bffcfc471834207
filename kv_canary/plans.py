"""Fixed-capacity device plans that the verify and write kernels consume.

Plans are filled on device by the plan kernels (``kernels/plan_triton.py`` and its torch
reference) without a host sync, so the whole per-forward path can be captured in a CUDA graph;
entries past ``num_valid`` / ``num_requests`` are ignored.
"""

from __future__ import annotations

import dataclasses

import torch

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
