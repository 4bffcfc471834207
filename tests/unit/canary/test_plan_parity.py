"""The Triton plan builder against its torch reference, byte for byte, over randomized forwards.

Plans are compared over their valid region: the verify plan's first ``num_valid`` entries, the
write plan's first ``num_requests`` runs and its first ``min(new tokens, capacity)`` entries.
Plans start filled with a sentinel, so an entry the Triton builder forgets to write shows.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from kv_canary.forward_rows import ForwardRows
from kv_canary.kernels import plan_reference, plan_triton
from kv_canary.plans import VerifyPlan, WritePlan
from tests.unit.canary.devices import DEVICES

NUM_SLOTS = 400
POOL_ROWS = 6
MAX_CONTEXT = 420
SENTINEL = 7777
BUILDERS = {"torch": plan_reference.build_group_plans, "triton": plan_triton.build_group_plans}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Forward:
    rows: ForwardRows
    window: int | None
    full_to_swa: torch.Tensor | None
    verify_capacity: int
    write_capacity: int
    request_capacity: int


def maybe_misaligned(values: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Sometimes a view one element into a larger buffer, as engines may slice their inputs."""
    if rng.random() < 0.3:
        return torch.cat([values[:1], values])[1:]
    return values


def random_forward(
    rng: random.Random, device: str, *, swa: bool, host_hints: bool, token_ids: bool, batch_size: int
) -> Forward:
    generator = torch.Generator().manual_seed(rng.randrange(1 << 30))
    req_to_token = torch.randint(1, NUM_SLOTS, (POOL_ROWS, MAX_CONTEXT), generator=generator, dtype=torch.int32)
    req_to_token[0] = 0  # the padding row
    requests = []
    for _ in range(batch_size):
        if rng.random() < 0.2:  # a graph-padding row, sometimes with a stale prefix length
            requests.append((0, rng.choice([0, 0, 5]), 1))
        else:
            prefix = rng.choice([0, 1, 3, 40, 129, 260])
            requests.append(
                (rng.randrange(1, POOL_ROWS), prefix, min(rng.choice([1, 1, 2, 9, 50, 140]), MAX_CONTEXT - prefix))
            )
    row_ids, prefix_lens, extend_lens = (
        (list(column) for column in zip(*requests, strict=True)) if requests else ([], [], [])
    )
    new_tokens = sum(extend_lens)
    positions = [
        prefix + offset for prefix, extend in zip(prefix_lens, extend_lens, strict=True) for offset in range(extend)
    ]
    length_dtype = rng.choice([torch.int32, torch.int64])
    window = rng.choice([1, 3, 64, 200]) if swa else None
    mapping = None
    if swa:
        mapping = torch.randint(1, 100, (NUM_SLOTS,), generator=generator)
        mapping[torch.rand(NUM_SLOTS, generator=generator) < 0.25] = 0  # slid out of the window
        mapping[0] = 0
        mapping = mapping.to(device)
    rows = ForwardRows(
        req_pool_indices=torch.tensor(row_ids, dtype=torch.int64, device=device),
        prefix_lens=maybe_misaligned(torch.tensor(prefix_lens, dtype=length_dtype, device=device), rng),
        extend_lens=torch.tensor(extend_lens, dtype=length_dtype, device=device),
        out_cache_loc=maybe_misaligned(torch.randint(0, NUM_SLOTS, (new_tokens,), generator=generator).to(device), rng),
        input_ids=maybe_misaligned(torch.randint(0, 50_000, (new_tokens,), generator=generator).to(device), rng),
        positions=torch.tensor(positions, dtype=torch.int64, device=device),
        req_to_token=req_to_token.to(device),
        req_token_ids=(
            torch.randint(-1, 1000, (POOL_ROWS, MAX_CONTEXT), generator=generator).to(device) if token_ids else None
        ),
        prefix_lens_host=tuple(prefix_lens) if host_hints else None,
        extend_lens_host=tuple(extend_lens) if host_hints else None,
        max_extend_len=1 if extend_lens and max(extend_lens) == 1 else None,
    )
    reads = sum(prefix if window is None else min(prefix, window) for prefix in prefix_lens)
    return Forward(
        rows=rows,
        window=window,
        full_to_swa=mapping,
        verify_capacity=max(1, rng.choice([reads + rng.randrange(50), reads // 2, 700])),
        write_capacity=max(1, rng.choice([new_tokens + rng.randrange(10), new_tokens // 2, 300])),
        request_capacity=max(1, rng.choice([batch_size + 1, batch_size - 2])),
    )


def allocate_plans(forward: Forward, device: str) -> tuple[VerifyPlan, WritePlan, torch.Tensor]:
    verify = VerifyPlan.allocate(forward.verify_capacity, device)
    write = WritePlan.allocate(
        capacity=forward.write_capacity, request_capacity=forward.request_capacity, device=device
    )
    for plan in (verify, write):
        for name in plan.__slots__:
            getattr(plan, name).fill_(SENTINEL)
    return verify, write, torch.full((1,), 5, dtype=torch.int64, device=device)


def assert_same_plans(reference: tuple, candidate: tuple, new_tokens: int) -> None:
    (reference_hints, reference_verify, reference_write, reference_overflow) = reference
    (hints, verify, write, overflow) = candidate
    assert hints == reference_hints
    assert int(overflow) == int(reference_overflow)
    num_valid = int(reference_verify.num_valid)
    assert int(verify.num_valid) == num_valid
    for name in ("slot_indices", "prev_slot_indices", "expected_positions", "expected_tokens"):
        assert torch.equal(getattr(verify, name)[:num_valid], getattr(reference_verify, name)[:num_valid]), name
    num_requests = int(reference_write.num_requests)
    assert int(write.num_requests) == num_requests
    for name in ("entry_starts", "entry_counts", "pred_slots"):
        assert torch.equal(getattr(write, name)[:num_requests], getattr(reference_write, name)[:num_requests]), name
    entries = min(new_tokens, write.capacity)
    for name in ("slot_indices", "tokens", "positions", "expected_tokens", "expected_positions"):
        assert torch.equal(getattr(write, name)[:entries], getattr(reference_write, name)[:entries]), name


def build_with_both(forwards: list[Forward], device: str) -> None:
    """Run the forwards in turn through each builder's own plans (reused, as the manager does)."""
    plans = {name: allocate_plans(forwards[0], device) for name in BUILDERS}
    for forward in forwards:
        results = {}
        for name, build in BUILDERS.items():
            verify, write, overflow = plans[name]
            hints = build(
                verify_plan=verify,
                write_plan=write,
                rows=forward.rows,
                plan_overflow=overflow,
                window=forward.window,
                full_to_swa=forward.full_to_swa,
            )
            results[name] = (hints, verify, write, overflow)
        assert_same_plans(results["torch"], results["triton"], forward.rows.num_new_tokens)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("host_hints", [True, False], ids=["host_hints", "no_hints"])
@pytest.mark.parametrize("swa", [False, True], ids=["full", "swa"])
def test_random_forwards_plan_byte_for_byte(swa, host_hints, seed, device):
    rng = random.Random(seed * 4 + 2 * swa + host_hints)
    first = random_forward(
        rng, device, swa=swa, host_hints=host_hints, token_ids=seed % 2 == 0, batch_size=rng.randint(1, 6)
    )
    later = [
        dataclasses.replace(
            random_forward(
                rng, device, swa=swa, host_hints=host_hints, token_ids=rng.random() < 0.5, batch_size=rng.randint(0, 6)
            ),
            verify_capacity=first.verify_capacity,
            write_capacity=first.write_capacity,
            request_capacity=first.request_capacity,
        )
        for _ in range(2)
    ]
    build_with_both([first, *later], device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("programs", [1, 3])
def test_long_runs_spread_over_few_programs_loop_over_their_blocks(programs, device, monkeypatch):
    """With the grid capped, each program fills several blocks of a long prefix and a long run."""
    monkeypatch.setattr(plan_triton, "_TARGET_PROGRAMS", programs)
    rng = random.Random(programs)
    for swa in (False, True):
        forward = random_forward(rng, device, swa=swa, host_hints=False, token_ids=True, batch_size=1)
        long_rows = dataclasses.replace(
            forward.rows,
            req_pool_indices=torch.tensor([3], device=device),
            prefix_lens=torch.tensor([270], device=device),
            extend_lens=torch.tensor([140], device=device),
            out_cache_loc=torch.randint(1, NUM_SLOTS, (140,), device=device),
            input_ids=torch.randint(0, 50_000, (140,), device=device),
            positions=torch.arange(270, 410, device=device),
        )
        build_with_both(
            [
                dataclasses.replace(
                    forward, rows=long_rows, window=300 if swa else None, verify_capacity=700, write_capacity=300
                )
            ],
            device,
        )


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch_sets_empty_plans(device):
    forward = random_forward(random.Random(1), device, swa=False, host_hints=True, token_ids=True, batch_size=0)
    build_with_both([forward], device)


@pytest.mark.parametrize("device", DEVICES)
def test_requests_past_the_request_capacity_are_dropped_and_counted(device):
    forward = dataclasses.replace(
        random_forward(random.Random(2), device, swa=False, host_hints=False, token_ids=True, batch_size=6),
        request_capacity=2,
    )
    build_with_both([forward], device)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_captured_builder_replays_later_forwards_like_the_reference():
    """Captured once without host hints, the launch plans the forwards later written into its inputs."""
    rng = random.Random(7)
    forward = dataclasses.replace(
        random_forward(rng, "cuda", swa=True, host_hints=False, token_ids=True, batch_size=4),
        verify_capacity=700,
        write_capacity=300,
        request_capacity=4,
    )
    rows = forward.rows
    verify, write, overflow = allocate_plans(forward, "cuda")

    def build() -> None:
        plan_triton.build_group_plans(
            verify_plan=verify,
            write_plan=write,
            rows=rows,
            plan_overflow=overflow,
            window=forward.window,
            full_to_swa=forward.full_to_swa,
        )

    build()  # compiles outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        build()
    for _ in range(3):
        rows.prefix_lens.copy_(torch.tensor([rng.choice([0, 3, 129, 260]) for _ in range(4)]))
        rows.req_pool_indices.copy_(torch.tensor([rng.randrange(POOL_ROWS) for _ in range(4)]))
        rows.req_to_token[1:].random_(1, NUM_SLOTS)
        forward.full_to_swa[1:].random_(0, 100)
        overflow_before = overflow.clone()
        graph.replay()
        reference_verify, reference_write, reference_overflow = allocate_plans(forward, "cuda")
        reference_overflow.copy_(overflow_before)
        reference_hints = plan_reference.build_group_plans(
            verify_plan=reference_verify,
            write_plan=reference_write,
            rows=rows,
            plan_overflow=reference_overflow,
            window=forward.window,
            full_to_swa=forward.full_to_swa,
        )
        assert_same_plans(
            (reference_hints, reference_verify, reference_write, reference_overflow),
            (reference_hints, verify, write, overflow),
            rows.num_new_tokens,
        )
