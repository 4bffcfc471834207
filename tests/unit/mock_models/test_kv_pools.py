import torch

from mock_models.config import EngineConfig
from mock_models.engine.model_runner import ModelRunner


def test_mha_pool_rows_and_buffer_infos(make_engine):
    pool = make_engine("mha", page_size=4, max_total_tokens=64).token_to_kv_pool
    assert type(pool).__name__ == "MHATokenToKVPool"
    assert len(pool.k_buffer) == len(pool.v_buffer) == 2
    assert pool.k_buffer[0].shape == (64 + 4, 2, 16)
    pointers, nbytes, item_lens = pool.get_contiguous_buf_infos()
    assert len(pointers) == 4 and nbytes[0] == pool.k_buffer[0].nbytes and item_lens[0] == 2 * 16 * 4 * 4


def test_swa_pool_window_layers_write_through_the_mapping(make_engine):
    engine = make_engine("swa", max_total_tokens=64, swa_max_total_tokens=48, chunked_prefill_size=8)
    pool = engine.token_to_kv_pool
    assert type(pool).__name__ == "SWAKVPool"
    assert pool.full_kv_pool.k_buffer[0].shape[0] == 65 and pool.swa_kv_pool.k_buffer[0].shape[0] == 49
    assert pool.full_to_swa_index_mapping is engine.swa_allocator.full_to_swa_index_mapping
    assert pool.full_to_swa_index_mapping.shape == (64 + 1 + 1,)
    swa_slots = engine.swa_allocator.alloc_for([10])
    pool.set_kv_buffer(1, torch.tensor([10]), torch.ones(1, 2, 16), torch.full((1, 2, 16), 2.0))
    assert pool.swa_kv_pool.k_buffer[0][swa_slots[0]].eq(1).all()
    assert not pool.full_kv_pool.k_buffer[0][10].any()  # layer 1 is a window layer


def test_dsv4_pool_has_no_v_half(make_engine):
    pool = make_engine("dsv4", max_total_tokens=64, swa_max_total_tokens=48, chunked_prefill_size=8).token_to_kv_pool
    assert type(pool).__name__ == "DeepSeekV4TokenToKVPool"
    assert pool.swa_kv_pool.v_buffer is None
    assert not hasattr(pool, "v_buffer") and not hasattr(pool, "full_kv_pool")
    assert pool.swa_kv_pool.k_buffer[0].shape == (49, 1, 32)
    assert pool.compressed_kv_pool.kv_buffer[0].shape == (65, 1, 32)
    pointers, _, _ = pool.get_state_buf_infos()
    assert pointers == [buffer.data_ptr() for buffer in pool.swa_kv_pool.k_buffer]


def test_rows_are_whole_words_in_every_kv_dtype():
    for dtype in ("float32", "bfloat16", "float16"):
        for mode in ("mha", "dsv4"):
            config = EngineConfig(model_mode=mode, kv_dtype=dtype, swa_window=8, max_total_tokens=64)
            pool = ModelRunner(config).token_to_kv_pool
            row = (pool.k_buffer if mode == "mha" else pool.swa_kv_pool.k_buffer)[0][0]
            assert row.nbytes >= 16 and row.nbytes % 8 == 0
