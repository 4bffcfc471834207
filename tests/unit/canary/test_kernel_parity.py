"""Triton kernels against their torch references, byte for byte, over randomized plans.

On CPU the Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1, set in conftest).
Violation rows are compared as sorted multisets: Triton blocks claim ring rows in any order.
"""

from __future__ import annotations

import random

import pytest
import torch

from kv_canary.config import RealKvHashMode
from kv_canary.device_state import CanaryDeviceState
from kv_canary.kernels import verify_reference, verify_triton, write_reference, write_triton
from kv_canary.launch_tags import LaunchTag
from kv_canary.plans import PADDING_POSITION, PREV_SEQUENCE_START, PREV_UNKNOWN, TOKEN_UNKNOWN, VerifyPlan, WritePlan
from kv_canary.real_kv import RealKvSource
from tests.unit.canary.devices import DEVICES

NUM_SLOTS = 160
BACKENDS = {
    "torch": (write_reference.write_canaries, verify_reference.verify_canaries),
    "triton": (write_triton.write_canaries, verify_triton.verify_canaries),
}


def sorted_rows(state: CanaryDeviceState) -> list[tuple[int, ...]]:
    count = min(int(state.ring.write_index), state.ring.capacity)
    return sorted(tuple(row) for row in state.ring.rows[:count].tolist())


def fill_write_plan(plan: WritePlan, runs: list[dict], rng: random.Random, corrupt_inputs: bool) -> None:
    entry = 0
    for request, run in enumerate(runs):
        plan.entry_starts[request], plan.entry_counts[request] = entry, len(run["slots"])
        plan.pred_slots[request] = run["pred"]
        for offset, slot in enumerate(run["slots"]):
            position = run["first_position"] + offset
            token = rng.randrange(1000)
            plan.slot_indices[entry], plan.tokens[entry], plan.positions[entry] = slot, token, position
            plan.expected_positions[entry], plan.expected_tokens[entry] = position, token
            if corrupt_inputs and rng.random() < 0.15:
                plan.expected_tokens[entry] = token + 1
            if corrupt_inputs and rng.random() < 0.1:
                plan.positions[entry] = position + 2
            if rng.random() < 0.2:
                plan.expected_tokens[entry] = TOKEN_UNKNOWN
            entry += 1
    plan.num_requests[0] = len(runs)


def random_runs(rng: random.Random, free: list[int], preds: dict[int, int] | None) -> list[dict]:
    """Runs of new slots; with ``preds`` (slot -> position), continue some cached sequences."""
    runs = []
    for _ in range(rng.randint(1, 5)):
        length = rng.choice([1, 1, 2, 5, 17, 40])
        slots = [free.pop() for _ in range(min(length, len(free) - 1))]
        if preds and rng.random() < 0.7:
            pred_slot, pred_position = rng.choice(list(preds.items()))
            runs.append({"slots": slots, "pred": pred_slot, "first_position": pred_position + 1})
        else:
            runs.append({"slots": slots, "pred": PREV_SEQUENCE_START, "first_position": 0})
    return runs


def make_real_kv(
    mode: RealKvHashMode, rng: random.Random, device: str
) -> tuple[list[torch.Tensor], RealKvSource | None]:
    generator = torch.Generator().manual_seed(rng.randrange(1 << 30))
    layers = [torch.randn(NUM_SLOTS, 3, 8, generator=generator, dtype=torch.float16).to(device) for _ in range(2)]
    return layers, RealKvSource.from_layer_buffers(layers, mode)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", [RealKvHashMode.NONE, RealKvHashMode.PARTIAL, RealKvHashMode.ALL])
def test_write_then_verify_match_byte_for_byte(seed, mode, device):
    """Even seeds verify in sequence order (predecessors in the neighbouring lane), odd ones shuffled."""
    rng = random.Random(seed * 31 + len(mode.value))
    layers, real_kv = make_real_kv(mode, rng, device)
    free = list(range(1, NUM_SLOTS))
    rng.shuffle(free)
    first_runs = random_runs(rng, free, None)
    positions = {slot: run["first_position"] + i for run in first_runs for i, slot in enumerate(run["slots"])}
    second_runs = random_runs(rng, free, positions)

    records = {name: torch.zeros(NUM_SLOTS, 4, dtype=torch.int64, device=device) for name in BACKENDS}
    states = {name: CanaryDeviceState.allocate(ring_capacity=256, device=device) for name in BACKENDS}
    for runs in (first_runs, second_runs):
        plan = WritePlan.allocate(capacity=256, request_capacity=8, device="cpu")
        fill_write_plan(plan, runs, rng, corrupt_inputs=seed % 2 == 1)
        plan = on_device(plan, device)
        longest = max(len(run["slots"]) for run in runs)
        for name, (write, _) in BACKENDS.items():
            write(
                records=records[name],
                plan=plan,
                launch_tag=LaunchTag.TAIL_V_SWA,
                state=states[name],
                real_kv=real_kv,
                assert_inputs=True,
                num_entries=sum(len(r["slots"]) for r in runs),
                max_entries_per_request=longest,
            )
    assert torch.equal(records["torch"], records["triton"])
    assert sorted_rows(states["torch"]) == sorted_rows(states["triton"])
    assert int(states["torch"].ring.write_index) == int(states["triton"].ring.write_index)
    if seed % 2 == 0:
        assert int(states["torch"].ring.write_index) == 0, "clean inputs must not raise write violations"

    chain = {}
    for run in first_runs + second_runs:
        for offset, slot in enumerate(run["slots"]):
            chain[slot] = run["pred"] if offset == 0 else run["slots"][offset - 1]
    written = list(chain)
    if seed % 2:
        rng.shuffle(written)
    plan = VerifyPlan.allocate(256, "cpu")
    host_records = records["torch"].cpu()
    for entry, slot in enumerate(written):
        plan.slot_indices[entry], plan.prev_slot_indices[entry] = slot, chain[slot]
        plan.expected_positions[entry] = host_records[slot, 1]
        plan.expected_tokens[entry] = host_records[slot, 0] if rng.random() < 0.7 else TOKEN_UNKNOWN
        if rng.random() < 0.1:
            plan.prev_slot_indices[entry] = PREV_UNKNOWN
        if rng.random() < 0.05:
            plan.slot_indices[entry] = 0  # reads the never-written padding slot: verified, and fails
        if rng.random() < 0.05:
            plan.expected_positions[entry] = PADDING_POSITION  # padding: skipped
    plan.num_valid[0] = len(written) - rng.randint(0, 3)
    plan = on_device(plan, device)
    corrupted = host_records.clone()
    for _ in range(rng.randint(0, 6)):
        corrupted[rng.choice(written), rng.randrange(4)] ^= 1 << rng.randrange(63)
    corrupted = corrupted.to(device)
    for _ in range(rng.randint(0, 3)):
        layers[rng.randrange(2)][rng.choice(written)].view(-1)[rng.randrange(24)] += 1

    verify_states = {}
    for name, (_, verify) in BACKENDS.items():
        verify_states[name] = CanaryDeviceState.allocate(ring_capacity=512, device=device)
        verify(
            records=corrupted,
            plan=plan,
            launch_tag=LaunchTag.SWEEP_K_FULL,
            state=verify_states[name],
            real_kv=real_kv,
            check_tokens=seed % 3 != 0,
            num_entries=len(written),
        )
    reference, triton_state = verify_states["torch"], verify_states["triton"]
    assert sorted_rows(reference) == sorted_rows(triton_state)
    assert torch.equal(reference.kernel_run_counters, triton_state.kernel_run_counters)
    assert torch.equal(reference.slot_run_counters, triton_state.slot_run_counters)
    assert int(reference.slot_run_counters[LaunchTag.SWEEP_K_FULL]) == int(
        (plan.expected_positions[: int(plan.num_valid)] != PADDING_POSITION).sum()
    )


def on_device(plan, device: str):
    return type(plan)(**{name: getattr(plan, name).to(device) for name in plan.__slots__})


@pytest.mark.parametrize("device", DEVICES)
def test_long_runs_chain_across_triton_blocks(device):
    """A run longer than the kernel's largest block carries its hash from block to block."""
    run_length = 1100  # the launcher's largest block is 1024 entries
    plan = WritePlan.allocate(capacity=run_length, request_capacity=1, device="cpu")
    plan.entry_starts[0], plan.entry_counts[0], plan.pred_slots[0], plan.num_requests[0] = 0, run_length, 0, 1
    slots = torch.arange(1, run_length + 1, dtype=torch.int32)
    plan.slot_indices.copy_(slots)
    plan.tokens.copy_(torch.randint(0, 50_000, (run_length,), dtype=torch.int32))
    plan.positions.copy_(torch.arange(run_length, dtype=torch.int32))
    plan.expected_positions.copy_(plan.positions)
    plan = on_device(plan, device)
    results = {}
    for name, (write, _) in BACKENDS.items():
        records = torch.zeros(run_length + 1, 4, dtype=torch.int64, device=device)
        write(
            records=records,
            plan=plan,
            launch_tag=LaunchTag.HEAD_K_FULL,
            state=CanaryDeviceState.allocate(ring_capacity=8, device=device),
            real_kv=None,
            assert_inputs=True,
            num_entries=run_length,
            max_entries_per_request=run_length,
        )
        results[name] = records
    assert torch.equal(results["torch"], results["triton"])
