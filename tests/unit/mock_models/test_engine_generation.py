"""Whole-engine behaviour: outputs, prefix reuse, eviction, chunked prefill, SWA residency."""

import pytest
import torch

from kv_canary_contract.token_oracle import TokenOracle
from mock_models.engine.engine import InvalidRequestError
from mock_models.engine.forward_batch import ForwardMode

MODES = ["mha", "swa", "dsv4"]


def pressured(mode: str, page_size: int) -> dict:
    """Pools small enough that twelve requests force radix eviction (and SWA tombstoning)."""
    settings = {"page_size": page_size, "max_total_tokens": 320, "max_running_requests": 6, "chunked_prefill_size": 32}
    if mode != "mha":
        settings["swa_max_total_tokens"] = 160
    return settings


def count_calls(obj: object, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(obj, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    setattr(obj, name, counted)
    return calls


def check_swa_window_is_resident(engine, batch) -> None:
    """The invariant the canary relies on: positions [P - window, P) of each request have SWA rows."""
    mapping = engine.swa_allocator.full_to_swa_index_mapping
    window = engine.config.swa_window
    live_full, live_swa = set(), set()
    for row, prefix in zip(batch.req_pool_indices_cpu, batch.extend_prefix_lens_cpu, strict=True):
        full = engine.req_to_token_pool.req_to_token[row, max(0, prefix - window) : prefix].to(torch.int64)
        swa = mapping[full]
        assert (swa != 0).all(), f"row {row}: prefix {prefix} has non-resident window positions"
        for full_slot, swa_slot in zip(full.tolist(), swa.tolist(), strict=True):
            live_full.add(full_slot)
            live_swa.add(swa_slot)
    assert len(live_swa) == len(live_full), "two live full slots share an SWA slot"


def assert_nothing_leaked(engine) -> None:
    config = engine.config
    assert engine.kv_cache.reserved_pages == 0 and engine.kv_cache.reserved_swa_slots == 0
    assert (
        engine.full_allocator.available_pages() * config.page_size + engine.radix_cache.total_size()
        == config.max_total_tokens
    )
    if engine.swa_allocator is not None:
        assert engine.swa_allocator.available_size() + engine.radix_cache.swa_resident_size() == config.swa_pool_size
    assert engine.req_to_token_pool.available_size() == config.max_running_requests


@pytest.mark.parametrize("page_size", [1, 4])
@pytest.mark.parametrize("mode", MODES)
def test_concurrent_shared_prefix_requests_under_memory_pressure_match_the_oracle_and_a_solo_run(
    mode, page_size, make_engine, shared_prefix_workload, forward_spy
):
    engine = make_engine(mode, **pressured(mode, page_size))
    evictions = count_calls(engine.radix_cache, "evict")
    swa_evictions = count_calls(engine.radix_cache, "evict_swa")
    if mode != "mha":
        forward_spy(engine, check_swa_window_is_resident)
    workload = shared_prefix_workload
    results = engine.generate(workload.prompts, workload.max_new_tokens)

    oracle = TokenOracle(seed=0, vocab_size=engine.config.vocab_size)
    for prompt, limit, result in zip(workload.prompts, workload.max_new_tokens, results, strict=True):
        assert list(result.output_ids) == oracle.continuation(prompt, limit)
        assert result.finish_reason == "length" and result.completion_tokens == limit
    assert sum(result.cached_tokens for result in results) > 0, "no prefix was reused"
    assert evictions, "the workload never made the radix cache evict"
    if mode != "mha":
        assert swa_evictions, "the workload never made the radix cache tombstone SWA rows"
    assert_nothing_leaked(engine)

    # The attention really read the right K/V: the same request alone, in a roomy engine with
    # nothing shared or evicted, computes the same hidden states (up to float rounding).
    solo = make_engine(mode, page_size=page_size)
    for prompt, limit, result in list(zip(workload.prompts, workload.max_new_tokens, results, strict=True))[:3]:
        solo.flush_cache()
        (alone,) = solo.generate([prompt], limit)
        assert alone.attention_checksum == pytest.approx(result.attention_checksum, abs=1e-3)


@pytest.mark.parametrize("mode", MODES)
def test_a_long_prompt_is_prefilled_in_chunks_whose_prefix_holds_the_earlier_chunks(mode, make_engine, forward_spy):
    engine = make_engine(mode, chunked_prefill_size=16)
    extends = []
    forward_spy(
        engine,
        lambda _, batch: (
            extends.append((batch.extend_prefix_lens_cpu, batch.extend_seq_lens_cpu))
            if batch.forward_mode.is_extend()
            else None
        ),
    )
    prompt = list(range(50))
    (result,) = engine.generate([prompt], 3)
    assert extends == [([0], [16]), ([16], [16]), ([32], [16]), ([48], [2])]
    assert list(result.output_ids) == TokenOracle(seed=0, vocab_size=1024).continuation(prompt, 3)


def test_a_second_request_reuses_the_first_ones_prompt(make_engine):
    engine = make_engine("mha", page_size=4)
    prompt = list(range(30))
    engine.generate([prompt], 5)
    (again,) = engine.generate([prompt + [7, 7]], 5)
    assert again.cached_tokens == 28  # the whole pages of its first 31 tokens (the last is always computed)


def test_running_requests_share_a_prompt_cached_after_prefill(make_engine):
    engine = make_engine("swa")
    first = engine.submit(list(range(40)), 30)
    engine.step()  # prefill: the prompt goes into the radix cache at once
    second = engine.submit(list(range(40)) + [1], 5)
    results = engine.run_until_idle()
    assert results[second].cached_tokens == 40 and results[first].cached_tokens == 0


def test_forward_count_counts_forwards_from_one_and_hooks_run_before_each(make_engine):
    engine = make_engine("mha")
    seen = []
    remove = engine.add_step_hook(lambda e: seen.append(e.forward_count))
    engine.generate([[1, 2, 3]], 4)  # one prefill, three decodes
    assert engine.forward_count == 4 and seen == [0, 1, 2, 3]
    remove()
    engine.generate([[4, 5]], 2)
    assert seen == [0, 1, 2, 3] and engine.forward_count == 6


def test_requests_wait_for_memory_instead_of_failing(make_engine):
    engine = make_engine("mha", max_total_tokens=64)
    results = engine.generate([list(range(i, i + 20)) for i in range(6)], 30)  # each needs 49 of 64 slots
    assert [len(result.output_ids) for result in results] == [30] * 6
    assert_nothing_leaked(engine)


def test_decode_batches_carry_sglang_extend_fields(make_engine, forward_spy):
    engine = make_engine("swa", page_size=4)
    batches = []
    forward_spy(engine, lambda _, batch: batches.append(batch))
    engine.generate([[1, 2, 3], [4, 5, 6, 7, 8]], 3)
    extend, decode = batches[0], batches[1]
    assert extend.forward_mode is ForwardMode.EXTEND and decode.forward_mode is ForwardMode.DECODE
    assert extend.extend_seq_lens_cpu == [3, 5] and extend.extend_start_loc_cpu == [0, 3]
    assert decode.extend_prefix_lens.tolist() == [3, 5] and decode.extend_seq_lens.tolist() == [1, 1]
    assert decode.extend_prefix_lens_cpu == [3, 5] and decode.seq_lens_cpu.tolist() == [4, 6]
    assert decode.req_pool_indices.dtype == torch.int64 and decode.out_cache_loc.dtype == torch.int64
    assert decode.extend_prefix_lens.dtype == torch.int32
    # each request's decode slot continues its own page
    assert decode.out_cache_loc.tolist() == [extend.out_cache_loc[2].item() + 1, extend.out_cache_loc[7].item() + 1]
    assert 0 not in extend.out_cache_loc.tolist()


def test_sampled_tokens_are_recorded_before_the_forward_that_feeds_them(make_engine, forward_spy):
    engine = make_engine("mha")
    fed_versus_recorded = []

    def check(engine, batch):
        rows = batch.req_pool_indices.repeat_interleave(batch.extend_seq_lens.to(torch.int64))
        recorded = engine.req_to_token_pool.req_token_ids[rows, batch.positions]
        fed_versus_recorded.append(torch.equal(recorded, batch.input_ids))
        assert torch.equal(
            engine.req_to_token_pool.req_to_token[rows, batch.positions].to(torch.int64), batch.out_cache_loc
        )

    forward_spy(engine, check)
    engine.generate([[1, 2, 3], [9, 8]], 5)
    assert fed_versus_recorded == [True] * 5


def test_what_is_fed_comes_from_the_request_not_from_the_record(make_engine, forward_spy):
    engine = make_engine("mha")
    rid = engine.submit([1, 2, 3], 3)
    engine.step()
    (req,) = engine.scheduler.running
    sampled = req.output_ids[-1]
    req.fill_ids[-1] = (sampled + 1) % engine.config.vocab_size  # what a swap_next_token fault does
    fed = []
    forward_spy(engine, lambda _, batch: fed.append(batch.input_ids.tolist()))
    engine.step()
    assert fed == [[(sampled + 1) % engine.config.vocab_size]]
    assert engine.req_to_token_pool.req_token_ids[req.req_pool_idx, 3] == sampled
    assert engine.run_until_idle()[rid].output_ids[0] == sampled


def test_flush_cache_only_when_idle(make_engine):
    engine = make_engine("mha")
    engine.generate([[1, 2, 3, 4]], 3)
    assert engine.radix_cache.total_size() > 0
    engine.submit([5, 6], 3)
    assert engine.flush_cache() is False
    engine.run_until_idle()
    assert engine.flush_cache() is True and engine.radix_cache.total_size() == 0


@pytest.mark.parametrize(
    ("prompt", "limit", "message"),
    [
        ([], 3, "empty"),
        ([1, 5000], 3, "outside the vocabulary"),
        ([1], 0, "must be >= 1"),
        ([1] * 900, 200, "exceeds max_context_len"),
        ([1] * 300, 300, "pages"),
    ],
)
def test_requests_the_engine_can_never_serve_are_rejected_with_the_reason(prompt, limit, message, make_engine):
    engine = make_engine("mha", max_context_len=1024)
    with pytest.raises(InvalidRequestError, match=message):
        engine.submit(prompt, limit)
