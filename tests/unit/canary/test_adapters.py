"""Pool adapters on SWA and DSv4-style fakes: groups, guarded halves, buffer infos, errors."""

from __future__ import annotations

import pytest
import torch

from kv_canary import CanaryConfig, KernelBackend, RealKvHashMode, UnsupportedPoolError
from kv_canary.adapters import attach_canary_buffers
from kv_canary.launch_tags import KvHalf, Phase, PoolGroupKind
from kv_canary.records import RecordWord
from tests.unit.canary.fake_engine import TinyModel
from tests.unit.canary.fake_swa_engine import FakeSwaEngine, LayerBuffers, SWAKVPool, buf_infos

CONFIG = CanaryConfig(real_kv_hash=RealKvHashMode.PARTIAL)


class SwaOnlyBuffers:
    """A DSv4-style SWA sub-pool: one latent per slot, so K buffers only."""

    def __init__(self, *, num_slots: int, num_layers: int = 2) -> None:
        self.k_buffer = [torch.zeros(num_slots, 16) for _ in range(num_layers)]


class DeepSeekV4TokenToKVPool:  # named like the DSv4 pool: the canary picks its adapter by class name
    def __init__(self, *, num_full_slots: int = 32, num_swa_slots: int = 12) -> None:
        self.page_size = 4
        self.swa_kv_pool = SwaOnlyBuffers(num_slots=num_swa_slots)
        self.compressed_kv_pool = LayerBuffers(num_slots=num_full_slots // 4, num_layers=1)  # left unguarded
        self.full_to_swa_index_mapping = torch.zeros(num_full_slots + 1, dtype=torch.int64)

    def get_state_buf_infos(self):
        return buf_infos(self.swa_kv_pool.k_buffer, self.page_size)


class Dsv4TinyModel(TinyModel):
    """Writes one latent per token into the SWA sub-pool's K buffers."""

    def forward(self, input_ids, positions, forward_batch) -> None:
        swa_slots = self.pool.full_to_swa_index_mapping[forward_batch.out_cache_loc]
        for layer, k in enumerate(self.pool.swa_kv_pool.k_buffer):
            k[swa_slots] = (input_ids * 31 + positions + layer).to(torch.float32)[:, None] + torch.arange(16)


class EngineSpecificSWAPool(SWAKVPool):
    """A subclass an engine might define: matched through the MRO."""


class PagedKVPool:
    pass


def record_buffers(group) -> list[torch.Tensor]:
    return [group.records(phase, half) for half in group.halves for phase in (Phase.HEAD, Phase.TAIL)]


def test_swa_pools_get_a_full_group_and_an_swa_group_with_both_halves():
    pool = SWAKVPool(num_full_slots=40, num_swa_slots=10)
    full, swa = attach_canary_buffers(pool, config=CONFIG, swa_window=8)
    assert (full.kind, full.num_slots, full.window, full.full_to_swa_index_mapping) == (
        PoolGroupKind.FULL,
        40,
        None,
        None,
    )
    assert (swa.kind, swa.num_slots, swa.window) == (PoolGroupKind.SWA, 10, 8)
    assert swa.full_to_swa_index_mapping is pool.full_to_swa_index_mapping  # shared, not copied
    assert set(full.halves) == set(swa.halves) == {KvHalf.K, KvHalf.V}
    assert swa.halves[KvHalf.V].real_kv.layer_words[1].data_ptr() == pool.swa_kv_pool.v_buffer[1].data_ptr()
    assert [tag.name for tag in swa.launch_tags((Phase.HEAD, Phase.SWEEP))] == [
        "HEAD_K_SWA",
        "HEAD_V_SWA",
        "SWEEP_K_SWA",
        "SWEEP_V_SWA",
    ]


def test_dsv4_pools_guard_the_swa_k_half_only():
    pool = DeepSeekV4TokenToKVPool()
    (group,) = attach_canary_buffers(pool, config=CONFIG, swa_window=6)
    assert (group.kind, group.num_slots, group.window) == (PoolGroupKind.SWA, 12, 6)
    assert set(group.halves) == {KvHalf.K}
    assert group.full_to_swa_index_mapping is pool.full_to_swa_index_mapping
    assert [tag.name for tag in group.launch_tags((Phase.HEAD, Phase.TAIL, Phase.SWEEP))] == [
        "HEAD_K_SWA",
        "TAIL_K_SWA",
        "SWEEP_K_SWA",
    ]


def test_swa_buffer_infos_report_each_groups_canary_records():
    pool = SWAKVPool(num_full_slots=40, num_swa_slots=10)
    full, swa = attach_canary_buffers(pool, config=CONFIG, swa_window=8)
    for infos, group, num_layers in ((pool.get_contiguous_buf_infos(), full, 1), (pool.get_state_buf_infos(), swa, 2)):
        pointers, lengths, item_lengths = infos
        k_head, k_tail, v_head, v_tail = record_buffers(group)
        # SGLang's transfer splits the list into a K half and a V half: each half ends with its records.
        assert len(pointers) == 2 * num_layers + 4
        k_records, v_records = slice(num_layers, num_layers + 2), slice(2 * num_layers + 2, None)
        assert pointers[k_records] == [k_head.data_ptr(), k_tail.data_ptr()]
        assert pointers[v_records] == [v_head.data_ptr(), v_tail.data_ptr()]
        assert lengths[k_records] + lengths[v_records] == [r.nbytes for r in (k_head, k_tail, v_head, v_tail)]
        assert item_lengths[k_records] + item_lengths[v_records] == [32] * 4  # a 32-byte record per slot, page 1


class OddListSWAKVPool(SWAKVPool):
    """Lists one buffer more than K and V halves would hold."""

    def get_contiguous_buf_infos(self):
        pointers, lengths, item_lengths = super().get_contiguous_buf_infos()
        return pointers[:1], lengths[:1], item_lengths[:1]


def test_a_buffer_list_without_k_and_v_halves_is_refused_when_read():
    pool = OddListSWAKVPool(num_full_slots=40, num_swa_slots=10)
    attach_canary_buffers(pool, config=CONFIG, swa_window=8)
    with pytest.raises(ValueError, match=r"returned 1 buffers, not K and V halves of equal length"):
        pool.get_contiguous_buf_infos()


def test_dsv4_state_buffer_infos_report_the_k_records_per_page():
    pool = DeepSeekV4TokenToKVPool()
    (group,) = attach_canary_buffers(pool, config=CONFIG, swa_window=6)
    pointers, lengths, item_lengths = pool.get_state_buf_infos()
    records = record_buffers(group)
    assert len(pointers) == 2 + 2 and pointers[-2:] == [r.data_ptr() for r in records]
    assert lengths[-2:] == [r.nbytes for r in records] and item_lengths[-2:] == [32 * 4] * 2


def test_pools_are_matched_along_their_mro():
    groups = attach_canary_buffers(
        EngineSpecificSWAPool(num_full_slots=8, num_swa_slots=4), config=CONFIG, swa_window=2
    )
    assert [group.kind for group in groups] == [PoolGroupKind.FULL, PoolGroupKind.SWA]


def test_an_unsupported_pool_is_an_error_naming_its_type_and_the_way_out():
    with pytest.raises(UnsupportedPoolError) as raised:
        attach_canary_buffers(PagedKVPool(), config=CONFIG, swa_window=None)
    message = str(raised.value)
    assert f"{__name__}.PagedKVPool" in message
    assert "DeepSeekV4TokenToKVPool, MHATokenToKVPool, SWAKVPool" in message
    assert "register_pool_adapter" in message


@pytest.mark.parametrize(
    "pool", [SWAKVPool(num_full_slots=8, num_swa_slots=4), DeepSeekV4TokenToKVPool()], ids=["swa", "dsv4"]
)
def test_sliding_window_pools_need_the_window(pool):
    with pytest.raises(ValueError, match=f"{type(pool).__name__} has a sliding-window sub-pool.*swa_window"):
        attach_canary_buffers(pool, config=CONFIG, swa_window=None)


def test_a_dsv4_install_guards_the_window_end_to_end():
    config = CanaryConfig(
        backend=KernelBackend.TORCH,
        stats_interval=0,
        health_check_interval=0,
        swa_divergence_interval=1,
        verify_capacity=128,
        write_capacity=32,
        max_requests_per_forward=2,
    )
    engine = FakeSwaEngine(
        config,
        window=3,
        num_swa_slots=12,
        num_slots=64,
        model_class=Dsv4TinyModel,
        pool=DeepSeekV4TokenToKVPool(num_full_slots=64, num_swa_slots=12),
    )
    assert [tag.name for tag in engine.canary.active_launch_tags] == ["HEAD_K_SWA", "TAIL_K_SWA"]
    assert engine.canary.observers == [engine.canary.reporter]  # no FULL group: no SWA divergence reporter
    request = engine.add_request([5, 6, 7, 8])
    engine.forward([request])
    for step in range(12):  # past the window, reusing SWA slots
        engine.forward([request], new_tokens=[[40 + step]])
    engine.canary.flush()
    assert engine.canary.violations == []
    victim = engine.swa_slot_of(request, len(request.tokens) - 1)
    engine.canary.group(PoolGroupKind.SWA).records(Phase.TAIL, KvHalf.K)[victim, RecordWord.PREV_HASH] ^= 1
    engine.forward([request], new_tokens=[[99]])
    engine.canary.flush()
    assert {(v.launch_tag, v.slot_idx, v.fail_reasons) for v in engine.canary.violations} == {
        ("TAIL_K_SWA", victim, ("chain_hash",))
    }
