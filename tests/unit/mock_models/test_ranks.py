"""Several ranks of the mock engine (tp, pp): real processes joined by torch.distributed (gloo).

Each test starts one engine of two ranks in this process (rank 0) and one rank process; a test
takes some seconds of CPU, most of it the rank process importing torch.
"""

from __future__ import annotations

import functools

import pytest

from kv_canary import CanaryConfig, CanaryMode, ViolationRecord
from mock_models.config import EngineConfig, RankLayout
from mock_models.engine.engine import Engine
from mock_models.engine.ranks.jobs import CanaryDrain, drain_canary
from mock_models.faults.kv_bytes import flip_layer0_k_row

PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8] * 4, [1, 2, 3, 4, 5, 6, 7, 8] * 3 + [9]]


def _generate(config: EngineConfig) -> list[tuple[tuple[int, ...], float]]:
    engine = Engine(config, canary_config=CanaryConfig(mode=CanaryMode.LOG))
    try:
        results = engine.generate(PROMPTS, 12)
        drains = engine.on_ranks(drain_canary)
    finally:
        engine.close()
    assert all(isinstance(drain, CanaryDrain) and drain.count == 0 for drain in drains), drains
    assert len(drains) == config.ranks
    return [(result.output_ids, result.attention_checksum) for result in results]


@pytest.mark.parametrize(("mode", "tp", "pp"), [("mha", 2, 1), ("swa", 1, 2), ("dsv4", 2, 1)])
def test_two_ranks_compute_what_one_does_and_their_canaries_stay_clean(mode, tp, pp):
    one = _generate(EngineConfig(model_mode=mode, swa_window=8, max_total_tokens=256))
    two = _generate(EngineConfig(model_mode=mode, swa_window=8, max_total_tokens=256, tp=tp, pp=pp))
    assert [tokens for tokens, _ in two] == [tokens for tokens, _ in one]
    # The sum over heads is taken in another order across ranks: equal up to rounding.
    assert [checksum for _, checksum in two] == pytest.approx([checksum for _, checksum in one], rel=1e-4)


def test_a_shard_corrupted_on_rank_1_is_reported_by_rank_1_only():
    engine = Engine(
        EngineConfig(model_mode="mha", max_total_tokens=256, tp=2), canary_config=CanaryConfig(mode=CanaryMode.LOG)
    )
    try:
        rid = engine.submit(list(range(1, 20)), max_new_tokens=8)
        for _ in range(3):
            engine.step()
        slot = int(engine.req_to_token_pool.req_to_token[engine.scheduler.running[0].req_pool_idx, 4])
        assert engine.on_ranks(functools.partial(flip_layer0_k_row, group="full", row=slot), (1,)) == [None, None]
        engine.run_until_idle()
        drains = engine.on_ranks(drain_canary)
    finally:
        engine.close()
    assert rid
    rank0, rank1 = (drain for drain in drains if isinstance(drain, CanaryDrain))
    assert rank0.count == 0
    records = [ViolationRecord.parse(line) for line in rank1.lines]
    assert records and all(r is not None and r.rank == 1 and r.slot_idx == slot for r in records)
    assert {reason for r in records if r is not None for reason in r.fail_reasons} == {"real_kv_hash"}


def test_a_pipeline_rank_holds_a_contiguous_run_of_layers():
    assert [list(RankLayout(rank=rank, pp=2).layers(4)) for rank in range(2)] == [[0, 1], [2, 3]]
    assert [list(RankLayout(rank=rank, pp=2).layers(3)) for rank in range(2)] == [[0, 1], [2]]
    assert [RankLayout(rank=rank, tp=2).tp_rank for rank in range(2)] == [0, 1]


def test_a_violation_line_names_its_rank_after_the_frozen_fields_and_parses_without_it():
    record = ViolationRecord(
        launch_tag="TAIL_K_FULL",
        fail_reasons=("real_kv_hash",),
        slot_idx=7,
        position=3,
        stored_token=5,
        expected_token=5,
        step=9,
        rank=1,
    )
    line = record.format()
    assert line.endswith("step=9 rank=1")
    assert ViolationRecord.parse(line) == record
    one_rank = line.removesuffix(" rank=1")
    parsed = ViolationRecord.parse(one_rank)
    assert parsed is not None and parsed.rank is None and parsed.format() == one_rank
