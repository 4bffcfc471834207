"""A lost K/V write is seen: a token's row the model skipped, or wrote into another slot, is reported.

Without the check a TAIL record hashes whatever the slot holds, stale bytes included, and agrees
with them; with ``check_lost_writes`` the HEAD write marks the new slots' rows and the TAIL write
reports a row still marked (``lost_write``).
"""

from __future__ import annotations

import pytest
import torch

from kv_canary import CanaryConfig, KernelBackend, RealKvHashMode
from tests.unit.canary.fake_engine import FakeEngine, TinyModel


class UnreliableModel(TinyModel):
    """Writes K/V like ``TinyModel`` but can skip one new token's K row in one layer, or write one new
    token's K/V into another slot."""

    skip: tuple[int, int] | None = None  # (index of the new token in this forward, layer)
    misdirect: tuple[int, int] | None = None  # (index of the new token, the slot it lands in instead)

    def forward(self, input_ids, positions, forward_batch):
        slots = forward_batch.out_cache_loc.clone()
        if self.misdirect is not None:
            slots[self.misdirect[0]] = self.misdirect[1]
        base = (input_ids * 31 + positions).to(torch.float32)[:, None, None]
        for layer, (k, v) in enumerate(zip(self.pool.k_buffer, self.pool.v_buffer, strict=True)):
            written_k = base + layer + torch.arange(k[0].numel(), device=k.device).view(k[0].shape)
            keep = torch.ones_like(slots, dtype=torch.bool)
            if self.skip is not None and self.skip[1] == layer:
                keep[self.skip[0]] = False
            k[slots[keep]] = written_k[keep]
            v[slots] = -base - layer


def engine(backend: KernelBackend, *, check: bool = True) -> FakeEngine:
    config = CanaryConfig(
        backend=backend,
        real_kv_hash=RealKvHashMode.PARTIAL,
        check_lost_writes=check,
        stats_interval=0,
        health_check_interval=0,
        violation_repeat_interval=0,
    )
    return FakeEngine(config, model_class=UnreliableModel)


def reported(engine: FakeEngine) -> set[tuple[str, int, tuple[str, ...], int]]:
    engine.canary.flush()
    return {(v.launch_tag, v.slot_idx, v.fail_reasons, v.step) for v in engine.canary.violations}


BACKENDS = [KernelBackend.TORCH, KernelBackend.TRITON]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_token_row_the_model_skipped_in_one_layer_is_a_lost_write(backend):
    subject = engine(backend)
    request = subject.add_request([5, 6, 7, 8])
    subject.forward([request])
    subject.model.skip = (0, 1)  # the next decode's token: no K row in layer 1
    subject.forward([request], new_tokens=[[9]])
    subject.model.skip = None
    assert reported(subject) == {("TAIL_K_FULL", subject.slot_of(request, 4), ("lost_write",), 2)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_write_that_lands_in_another_slot_is_lost_for_its_own_and_corrupts_the_other(backend):
    subject = engine(backend)
    reader = subject.add_request([1, 2, 3, 4])
    writer = subject.add_request([50, 51])
    subject.forward([reader, writer])
    target_of_stray_write = subject.slot_of(reader, 1)  # a prefix slot the reader goes on reading
    subject.model.misdirect = (1, target_of_stray_write)  # the writer's decode token lands there
    subject.forward([reader, writer], new_tokens=[[5], [52]])
    subject.model.misdirect = None
    lost = subject.slot_of(writer, 2)
    found = reported(subject)
    assert {("TAIL_K_FULL", lost, ("lost_write",), 2), ("TAIL_V_FULL", lost, ("lost_write",), 2)} <= found
    # The reader's TAIL verify of the same forward sees the stray bytes in its own prefix slot.
    assert ("TAIL_K_FULL", target_of_stray_write, ("real_kv_hash",), 2) in found


def test_without_the_check_a_skipped_row_goes_unseen():
    subject = engine(KernelBackend.TORCH, check=False)
    request = subject.add_request([5, 6, 7, 8])
    subject.forward([request])
    subject.model.skip = (0, 1)
    subject.forward([request], new_tokens=[[9]])
    subject.model.skip = None
    subject.forward([request], new_tokens=[[10]])
    assert reported(subject) == set()


def test_a_slot_reused_for_the_same_token_with_identical_bytes_is_no_lost_write():
    """Only the mark counts: the previous occupant's bytes, identical here, are never compared."""
    subject = engine(KernelBackend.TORCH)
    first = subject.add_request([5, 6, 7])
    subject.forward([first])
    freed = [subject.slot_of(first, position) for position in range(3)]
    subject.free_slots[:0] = freed  # handed out again, in the same order
    second = subject.add_request([5, 6, 7])
    subject.forward([second])
    assert [subject.slot_of(second, position) for position in range(3)] == freed
    assert reported(subject) == set()
