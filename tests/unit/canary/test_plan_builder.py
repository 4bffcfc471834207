from __future__ import annotations

import torch

from kv_canary.forward_rows import ForwardRows
from kv_canary.plan_builder import build_verify_plan, build_write_plan
from kv_canary.plans import PREV_SEQUENCE_START, PREV_UNKNOWN, TOKEN_UNKNOWN, VerifyPlan, WritePlan


def two_request_rows(*, host_hints: bool = True) -> ForwardRows:
    """Row 1 has 5 cached tokens and extends by 2; row 2 has 3 cached and decodes 1."""
    req_to_token = torch.zeros(4, 16, dtype=torch.int32)
    req_to_token[1, :7] = torch.tensor([10, 11, 12, 13, 14, 15, 16])
    req_to_token[2, :4] = torch.tensor([10, 11, 20, 21])
    token_ids = torch.full((4, 16), -1)
    token_ids[1, :7] = torch.arange(100, 107)
    token_ids[2, :4] = torch.tensor([100, 101, 300, 301])
    return ForwardRows(req_pool_indices=torch.tensor([1, 2]), prefix_lens=torch.tensor([5, 3]),
                       extend_lens=torch.tensor([2, 1]), out_cache_loc=torch.tensor([15, 16, 21]),
                       input_ids=torch.tensor([105, 106, 301]), positions=torch.tensor([5, 6, 3]),
                       req_to_token=req_to_token, req_token_ids=token_ids,
                       prefix_lens_host=(5, 3) if host_hints else None, extend_lens_host=(2, 1) if host_hints else None)


def test_full_verify_plan_covers_every_prefix_slot_with_its_predecessor():
    plan, overflow = VerifyPlan.allocate(32, "cpu"), torch.zeros(1, dtype=torch.int64)
    n = build_verify_plan(plan, two_request_rows(), plan_overflow=overflow)
    assert n == 8 and int(plan.num_valid) == 8
    assert plan.slot_indices[:8].tolist() == [10, 11, 12, 13, 14, 10, 11, 20]
    assert plan.prev_slot_indices[:8].tolist() == [PREV_SEQUENCE_START, 10, 11, 12, 13, PREV_SEQUENCE_START, 10, 11]
    assert plan.expected_positions[:8].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert plan.expected_tokens[:8].tolist() == [100, 101, 102, 103, 104, 100, 101, 300]
    assert int(overflow) == 0


def test_without_host_hints_the_plan_spans_its_capacity_but_only_valid_entries_count():
    plan, overflow = VerifyPlan.allocate(16, "cpu"), torch.zeros(1, dtype=torch.int64)
    assert build_verify_plan(plan, two_request_rows(host_hints=False), plan_overflow=overflow) is None
    assert int(plan.num_valid) == 8 and plan.slot_indices[8:].eq(0).all()


def test_swa_verify_plan_reads_only_the_window_through_the_mapping():
    mapping = torch.zeros(32, dtype=torch.int64)
    mapping[[12, 13, 14, 11, 20]] = torch.tensor([3, 4, 5, 6, 7])  # slot 11 resident, 10 slid out
    plan, overflow = VerifyPlan.allocate(32, "cpu"), torch.zeros(1, dtype=torch.int64)
    n = build_verify_plan(plan, two_request_rows(), plan_overflow=overflow, window=2, full_to_swa=mapping)
    assert n == 4
    assert plan.slot_indices[:4].tolist() == [4, 5, 6, 7]  # positions 3,4 of row 1; 1,2 of row 2
    assert plan.prev_slot_indices[:4].tolist() == [3, 4, PREV_UNKNOWN, 6]


def test_verify_plan_overflow_is_counted_not_silent():
    plan, overflow = VerifyPlan.allocate(5, "cpu"), torch.zeros(1, dtype=torch.int64)
    build_verify_plan(plan, two_request_rows(), plan_overflow=overflow)
    assert int(plan.num_valid) == 5 and int(overflow) == 3


def test_write_plan_chains_each_run_from_the_last_cached_slot():
    plan = WritePlan.allocate(capacity=8, request_capacity=4, device="cpu")
    overflow = torch.zeros(1, dtype=torch.int64)
    assert build_write_plan(plan, two_request_rows(), plan_overflow=overflow) == (3, 2)
    assert plan.entry_starts[:2].tolist() == [0, 2] and plan.entry_counts[:2].tolist() == [2, 1]
    assert plan.pred_slots[:2].tolist() == [14, 20] and int(plan.num_requests) == 2
    assert plan.slot_indices[:3].tolist() == [15, 16, 21]
    assert plan.expected_positions[:3].tolist() == [5, 6, 3]
    assert plan.expected_tokens[:3].tolist() == [105, 106, 301]


def test_write_plan_without_recorded_tokens_expects_none():
    rows = two_request_rows()
    rows = ForwardRows(**{**{f: getattr(rows, f) for f in rows.__slots__}, "req_token_ids": None})
    plan = WritePlan.allocate(capacity=8, request_capacity=4, device="cpu")
    build_write_plan(plan, rows, plan_overflow=torch.zeros(1, dtype=torch.int64))
    assert plan.expected_tokens[:3].tolist() == [TOKEN_UNKNOWN] * 3


def test_write_plan_overflow_is_counted():
    plan = WritePlan.allocate(capacity=2, request_capacity=4, device="cpu")
    overflow = torch.zeros(1, dtype=torch.int64)
    build_write_plan(plan, two_request_rows(), plan_overflow=overflow)
    assert plan.entry_counts[:2].tolist() == [2, 0] and int(overflow) == 1
