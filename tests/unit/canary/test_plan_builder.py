"""What the torch reference's plans hold for a small hand-made forward (the Triton kernels plan in their launches)."""

from __future__ import annotations

import pytest
import torch

from kv_canary.forward_rows import ForwardRows
from kv_canary.kernels import plan_reference
from kv_canary.plans import PADDING_POSITION, PREV_SEQUENCE_START, PREV_UNKNOWN, TOKEN_UNKNOWN, VerifyPlan, WritePlan
from tests.unit.canary.devices import DEVICES

BUILDERS = [pytest.param(plan_reference.build_group_plans, id="torch")]


@pytest.fixture(params=BUILDERS)
def build(request):
    return request.param


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def two_request_rows(device: str = "cpu", *, host_hints: bool = True) -> ForwardRows:
    """Row 1 has 5 cached tokens and extends by 2; row 2 has 3 cached and decodes 1."""
    req_to_token = torch.zeros(4, 16, dtype=torch.int32)
    req_to_token[1, :7] = torch.tensor([10, 11, 12, 13, 14, 15, 16])
    req_to_token[2, :4] = torch.tensor([10, 11, 20, 21])
    token_ids = torch.full((4, 16), -1)
    token_ids[1, :7] = torch.arange(100, 107)
    token_ids[2, :4] = torch.tensor([100, 101, 300, 301])
    return ForwardRows(
        req_pool_indices=torch.tensor([1, 2], device=device),
        prefix_lens=torch.tensor([5, 3], device=device),
        extend_lens=torch.tensor([2, 1], device=device),
        out_cache_loc=torch.tensor([15, 16, 21], device=device),
        input_ids=torch.tensor([105, 106, 301], device=device),
        positions=torch.tensor([5, 6, 3], device=device),
        req_to_token=req_to_token.to(device),
        req_token_ids=token_ids.to(device),
        prefix_lens_host=(5, 3) if host_hints else None,
        extend_lens_host=(2, 1) if host_hints else None,
    )


def plan_both(
    build,
    rows: ForwardRows,
    device: str,
    *,
    verify_capacity: int = 32,
    write_capacity: int = 8,
    request_capacity: int = 4,
    **swa,
):
    verify = VerifyPlan.allocate(verify_capacity, device)
    write = WritePlan.allocate(capacity=write_capacity, request_capacity=request_capacity, device=device)
    overflow = torch.zeros(1, dtype=torch.int64, device=device)
    hints = build(verify_plan=verify, write_plan=write, rows=rows, plan_overflow=overflow, **swa)
    return hints, verify, write, int(overflow)


def test_full_verify_plan_covers_every_prefix_slot_with_its_predecessor(build, device):
    (n, _, _), plan, _, overflow = plan_both(build, two_request_rows(device), device)
    assert n == 8 and int(plan.num_valid) == 8
    assert plan.slot_indices[:8].tolist() == [10, 11, 12, 13, 14, 10, 11, 20]
    assert plan.prev_slot_indices[:8].tolist() == [PREV_SEQUENCE_START, 10, 11, 12, 13, PREV_SEQUENCE_START, 10, 11]
    assert plan.expected_positions[:8].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert plan.expected_tokens[:8].tolist() == [100, 101, 102, 103, 104, 100, 101, 300]
    assert overflow == 0


def test_without_host_hints_the_plan_spans_its_capacity_but_only_valid_entries_count(build, device):
    (n, _, _), plan, _, _ = plan_both(build, two_request_rows(device, host_hints=False), device, verify_capacity=16)
    assert n is None
    assert int(plan.num_valid) == 8 and plan.slot_indices[8:].eq(0).all()


def test_swa_verify_plan_reads_only_the_window_through_the_mapping(build, device):
    mapping = torch.zeros(32, dtype=torch.int64)
    mapping[[12, 13, 14, 11, 20]] = torch.tensor([3, 4, 5, 6, 7])  # slot 11 resident, 10 slid out
    (n, _, _), plan, _, _ = plan_both(build, two_request_rows(device), device, window=2, full_to_swa=mapping.to(device))
    assert n == 4
    assert plan.slot_indices[:4].tolist() == [4, 5, 6, 7]  # positions 3,4 of row 1; 1,2 of row 2
    assert plan.prev_slot_indices[:4].tolist() == [3, 4, PREV_UNKNOWN, 6]


def test_a_window_position_without_an_swa_slot_is_planned_at_the_padding_slot_and_so_verified(build, device):
    # Found by the stateful reliability machine: a force-evicted radix node leaves its readers'
    # window positions mapped to 0; attention then reads the SWA pool's padding row.
    mapping = torch.zeros(32, dtype=torch.int64)
    mapping[[13, 11, 20]] = torch.tensor([4, 6, 7])  # position 4 of row 1 (slot 14) lost its SWA slot
    _, plan, _, _ = plan_both(build, two_request_rows(device), device, window=2, full_to_swa=mapping.to(device))
    assert plan.slot_indices[:4].tolist() == [4, 0, 6, 7]
    assert plan.expected_positions[:4].tolist() == [3, 4, 1, 2]  # not padding: the verify reads slot 0


def test_entries_of_requests_on_the_padding_row_are_padding(build, device):
    rows = two_request_rows(device)
    rows = ForwardRows(
        **{**{f: getattr(rows, f) for f in rows.__slots__}, "req_pool_indices": torch.tensor([1, 0], device=device)}
    )  # a padded batch entry
    _, plan, _, _ = plan_both(build, rows, device)
    assert plan.expected_positions[:8].tolist() == [0, 1, 2, 3, 4] + [PADDING_POSITION] * 3


def test_verify_plan_overflow_is_counted_not_silent(build, device):
    _, plan, _, overflow = plan_both(build, two_request_rows(device), device, verify_capacity=5)
    assert int(plan.num_valid) == 5 and overflow == 3


def test_write_plan_chains_each_run_from_the_last_cached_slot(build, device):
    (_, entries, longest), _, plan, _ = plan_both(build, two_request_rows(device), device)
    assert (entries, longest) == (3, 2)
    assert plan.entry_starts[:2].tolist() == [0, 2] and plan.entry_counts[:2].tolist() == [2, 1]
    assert plan.pred_slots[:2].tolist() == [14, 20] and int(plan.num_requests) == 2
    assert plan.slot_indices[:3].tolist() == [15, 16, 21]
    assert plan.expected_positions[:3].tolist() == [5, 6, 3]
    assert plan.expected_tokens[:3].tolist() == [105, 106, 301]


def test_write_plan_without_recorded_tokens_expects_none(build, device):
    rows = two_request_rows(device)
    rows = ForwardRows(**{**{f: getattr(rows, f) for f in rows.__slots__}, "req_token_ids": None})
    _, _, plan, _ = plan_both(build, rows, device)
    assert plan.expected_tokens[:3].tolist() == [TOKEN_UNKNOWN] * 3


def test_write_plan_overflow_is_counted(build, device):
    _, _, plan, overflow = plan_both(build, two_request_rows(device), device, write_capacity=2)
    assert plan.entry_counts[:2].tolist() == [2, 0] and overflow == 1
