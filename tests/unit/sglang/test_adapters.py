"""Pool adapters on SGLang 0.5.23's real pools, built on the CPU."""

from __future__ import annotations

import pytest
import torch

from kv_canary import CanaryConfig, RealKvHashMode
from kv_canary.adapters import attach_canary_buffers
from kv_canary.launch_tags import KvHalf, PoolGroupKind
from tests.unit.sglang import sglang_imports as sgl

pytestmark = pytest.mark.sglang

PARTIAL = CanaryConfig(real_kv_hash=RealKvHashMode.PARTIAL)


def mha_pool(**overrides) -> object:
    kwargs = {
        "size": 64,
        "page_size": 4,
        "dtype": torch.bfloat16,
        "head_num": 2,
        "head_dim": 8,
        "layer_num": 2,
        "device": "cpu",
        "enable_memory_saver": False,
    }
    return sgl.MHATokenToKVPool(**(kwargs | overrides))


def swa_pool(*, full_layers=(0,), swa_layers=(1, 2)) -> object:
    return sgl.SWAKVPool(
        size=64,
        size_swa=32,
        page_size=1,
        dtype=torch.bfloat16,
        head_num=2,
        head_dim=8,
        full_attention_layer_ids=list(full_layers),
        swa_attention_layer_ids=list(swa_layers),
        device="cpu",
    )


def test_mha_pool_gets_one_record_per_slot_including_the_padding_page():
    pool = mha_pool()
    (group,) = attach_canary_buffers(pool, config=PARTIAL, swa_window=None)
    assert (group.kind, group.num_slots) == (PoolGroupKind.FULL, 64 + 4)  # size + page_size rows
    assert group.num_slots == pool.k_buffer[0].shape[0]
    # The real-KV views alias SGLang's buffers, whose K and V halves share one allocation per layer.
    words = group.halves[KvHalf.V].real_kv.layer_words[1]
    assert words.data_ptr() == pool.v_buffer[1].data_ptr()
    pointers, _, _ = pool.get_contiguous_buf_infos()
    assert len(pointers) == 2 * 2 + 4  # four K/V layers, then HEAD and TAIL records of each half


def test_page_major_hnd_layout_is_guarded_without_real_kv_and_refuses_to_hash(monkeypatch):
    monkeypatch.setenv("SGLANG_USE_HND_KVCACHE", "1")
    pool = mha_pool()
    assert pool.kv_cache_layout == "hnd" and pool.k_buffer[0].shape[0] == (64 + 4) // 4  # pages, not slots
    (group,) = attach_canary_buffers(pool, config=CanaryConfig(real_kv_hash=RealKvHashMode.NONE), swa_window=None)
    assert group.num_slots == 68 and group.halves[KvHalf.K].real_kv is None
    with pytest.raises(ValueError, match=r"page-major layout.*real_kv_hash=none"):
        attach_canary_buffers(mha_pool(), config=PARTIAL, swa_window=None)


def test_swa_pool_shares_the_mapping_its_real_allocator_registered():
    pool = swa_pool()
    with pytest.raises(ValueError, match=r"full_to_swa_index_mapping is not set yet.*after the allocator"):
        attach_canary_buffers(pool, config=PARTIAL, swa_window=4)
    allocator = sgl.SWATokenToKVPoolAllocator(64, 32, 1, torch.bfloat16, "cpu", pool, need_sort=False)
    full, swa = attach_canary_buffers(pool, config=PARTIAL, swa_window=4)
    assert (full.kind, full.num_slots, swa.kind, swa.num_slots, swa.window) == (
        PoolGroupKind.FULL,
        65,
        PoolGroupKind.SWA,
        33,
        4,
    )
    assert swa.full_to_swa_index_mapping is allocator.full_to_swa_index_mapping
    assert allocator.full_to_swa_index_mapping.shape[0] == 64 + 1 + 1  # a trailing -1 past the last slot
    assert swa.halves[KvHalf.K].real_kv.layer_words[1].data_ptr() == pool.swa_kv_pool.k_buffer[1].data_ptr()


def test_all_window_swa_pool_gets_only_an_swa_group():
    pool = swa_pool(full_layers=(), swa_layers=(0, 1))
    sgl.SWATokenToKVPoolAllocator(64, 32, 1, torch.bfloat16, "cpu", pool, need_sort=False)
    (group,) = attach_canary_buffers(pool, config=PARTIAL, swa_window=4)
    assert group.kind is PoolGroupKind.SWA
