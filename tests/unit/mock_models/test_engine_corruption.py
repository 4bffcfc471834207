"""Corrupting cached K/V changes what the models compute: the canary's faults are real faults."""

import pytest
import torch

PROMPT = list(range(100, 140))


def run_with_corruption(make_engine, mode: str, corrupt) -> tuple[float, int]:
    """Cache PROMPT, let ``corrupt(engine, slots)`` damage its cached K/V, then run a request
    that extends PROMPT; returns that request's checksum and cached prefix length."""
    engine = make_engine(mode)
    engine.generate([PROMPT], 3)
    slots = engine.radix_cache.match_prefix(PROMPT).device_indices
    if corrupt is not None:
        corrupt(engine, slots)
    (result,) = engine.generate([PROMPT + [1, 2]], 4)
    return result.attention_checksum, result.cached_tokens


def corrupt_full_k(engine, slots):
    pool = engine.token_to_kv_pool
    full = pool if type(pool).__name__ == "MHATokenToKVPool" else pool.full_kv_pool
    full.k_buffer[0][slots[5]] += 3.0


def corrupt_swa_v_in_window(engine, slots):
    pool = engine.token_to_kv_pool
    pool.swa_kv_pool.v_buffer[0][pool.full_to_swa_index_mapping[slots[-3]]] += 3.0


def corrupt_latent_in_window(engine, slots):
    pool = engine.token_to_kv_pool
    pool.swa_kv_pool.k_buffer[1][pool.full_to_swa_index_mapping[slots[-3]]] += 3.0


@pytest.mark.parametrize(
    ("mode", "corrupt"),
    [
        ("mha", corrupt_full_k),
        ("swa", corrupt_full_k),
        ("swa", corrupt_swa_v_in_window),
        ("dsv4", corrupt_latent_in_window),
    ],
)
def test_corrupting_a_cached_slot_changes_the_checksum_of_a_request_that_reads_it(mode, corrupt, make_engine):
    clean, cached = run_with_corruption(make_engine, mode, None)
    corrupted, cached_again = run_with_corruption(make_engine, mode, corrupt)
    assert cached == cached_again == len(PROMPT)  # the second request reads the damaged prefix
    assert corrupted != pytest.approx(clean, abs=1e-3)


def test_corrupting_a_slot_nobody_reads_changes_nothing(make_engine):
    def corrupt_free_slot(engine, slots):
        engine.token_to_kv_pool.k_buffer[0][engine.config.max_total_tokens - 1] += 3.0

    clean, _ = run_with_corruption(make_engine, "mha", None)
    untouched, _ = run_with_corruption(make_engine, "mha", corrupt_free_slot)
    assert untouched == clean


def test_the_same_schedule_gives_the_same_checksum_bit_for_bit(make_engine):
    first, _ = run_with_corruption(make_engine, "dsv4", None)
    second, _ = run_with_corruption(make_engine, "dsv4", None)
    assert first == second and torch.isfinite(torch.tensor(first))
