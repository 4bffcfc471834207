"""The canary on every pool class SGLang 0.5.23's own canary guards, built for real on the CPU:
``MHATokenToKVPool``, ``MHATokenToKVPoolFP4``, ``SWAKVPool`` and ``DeepSeekV4TokenToKVPool`` (with
SGLang's server config published, as its scheduler process does), each on SGLang's paged
allocator. Clean traffic is clean, corruption the canary guards is caught, and the blind spots
docs/SGLANG.md names stay blind."""

from __future__ import annotations

import typing

import pytest
import torch

from kv_canary import CanaryConfig, KernelBackend, RealKvHashMode
from kv_canary.adapters import attach_canary_buffers
from kv_canary.errors import PoolLayoutError
from kv_canary.launch_tags import KvHalf, PoolGroupKind
from tests.unit.sglang.paged_node import MODES, PagedNode, Request, dsv4_pool

pytestmark = pytest.mark.sglang


def canary_config(mode: str) -> CanaryConfig:
    return CanaryConfig(
        backend=KernelBackend.TORCH,
        stats_interval=0,
        health_check_interval=0,
        verify_capacity=1024,
        write_capacity=512,
        max_requests_per_forward=8,
        # DeepSeek-V4's latents sit in padded FlashMLA pages, not one row per slot: records only.
        real_kv_hash=RealKvHashMode.NONE if mode == "dsv4" else RealKvHashMode.PARTIAL,
    )


def node(mode: str) -> PagedNode:
    if mode == "dsv4":  # pages of 256 tokens
        return PagedNode(canary_config(mode), mode=mode, size=2048, swa_size=2048, window=8, max_context=1100)
    return PagedNode(canary_config(mode), mode=mode, page_size=4, size=128, swa_size=64, window=8)


def traffic(served: PagedNode, decodes: int = 5) -> tuple[Request, Request]:
    """Two requests prefill together, each ending mid-page, and the first decodes past a page boundary."""
    page = served.page_size
    first = served.admit([10 + i % 500 for i in range(4 * page - 2)])
    second = served.admit([600 + i for i in range(page + 3)])
    served.forward([first, second])
    for step in range(decodes):
        served.forward([first, second], [[100 + step], [200 + step]])
    return first, second


def reasons(violations) -> set[str]:
    return {reason for v in violations for reason in v.fail_reasons}


def test_each_pool_class_gets_the_groups_and_halves_its_layout_allows():
    expected = {
        "mha": {(PoolGroupKind.FULL, (KvHalf.K, KvHalf.V))},
        "mha-fp4": {(PoolGroupKind.FULL, (KvHalf.K, KvHalf.V))},
        "swa": {(PoolGroupKind.FULL, (KvHalf.K, KvHalf.V)), (PoolGroupKind.SWA, (KvHalf.K, KvHalf.V))},
        "dsv4": {(PoolGroupKind.SWA, (KvHalf.K,))},  # the SWA latent only: no V half exists
    }
    for mode in MODES:
        served = node(mode)
        groups = served.canary.groups
        assert {(group.kind, tuple(group.halves)) for group in groups} == expected[mode], mode
        if mode == "dsv4":
            (group,) = groups
            swa = served.pool.swa_kv_pool
            assert group.num_slots == swa.size + swa.page_size == swa.kv_buffer[0].shape[0] * swa.page_size
            assert group.window == served.pool.sliding_window


def test_fp4_pool_hashes_its_packed_bytes_but_not_its_scales():
    served = node("mha-fp4")
    (group,) = served.canary.groups
    k = group.halves[KvHalf.K].real_kv
    assert k.layer_words[0].data_ptr() == served.pool.k_buffer[0].data_ptr()  # packed FP4 rows, uint8 in SGLang
    assert all(
        words.data_ptr() != scales.data_ptr() for words in k.layer_words for scales in served.pool.k_scale_buffer
    )


def test_deepseek_v4_pool_refuses_real_kv_hashing_and_says_why():
    pool = dsv4_pool(size=2048, swa_size=1024, window=8, rows=4)
    with pytest.raises(PoolLayoutError, match=r"full_to_swa_index_mapping is not set yet"):
        attach_canary_buffers(pool, config=canary_config("dsv4"), swa_window=8)
    node_with_mapping = node("dsv4")  # its allocator registered the mapping
    with pytest.raises(PoolLayoutError, match=r"page-major layout.*real_kv_hash=none"):
        attach_canary_buffers(node_with_mapping.pool, config=canary_config("mha"), swa_window=8)


@pytest.mark.parametrize("mode", MODES)
def test_clean_paged_traffic_has_no_violations(mode):
    served = node(mode)
    first, _second = traffic(served)
    pages = served.slots_of(first) // served.page_size
    assert pages[-1] != pages[4 * served.page_size - 3]  # the decodes took a fresh page
    assert served.reported() == []


@pytest.mark.parametrize("mode", MODES)
def test_a_remapped_req_to_token_entry_inside_the_window_is_caught(mode):
    served = node(mode)
    first, second = traffic(served)
    position = first.kv_len - 2  # inside every group's window
    served.req_to_token_pool.req_to_token[first.row, position] = served.slot_of(second, second.kv_len - 1)
    served.forward([first, second], [[7], [8]])
    violations = served.reported()
    assert {"position", "chain_hash"} <= reasons(violations)
    tags = {v.launch_tag for v in violations}
    assert ("HEAD_K_SWA" in tags) if mode == "dsv4" else ("HEAD_K_FULL" in tags and "HEAD_V_FULL" in tags)


@pytest.mark.parametrize("mode", ["mha", "mha-fp4", "swa"])
def test_a_changed_kv_byte_is_caught_by_the_real_kv_hash(mode):
    served = node(mode)
    first, second = traffic(served)
    slot = served.slot_of(first, 3)
    full = served.pool.full_kv_pool if mode == "swa" else served.pool
    full.v_buffer[0][slot].view(torch.uint8).view(-1)[0] ^= 1
    served.forward([first, second], [[7], [8]])
    violations = served.reported()
    assert any(
        v.launch_tag == "TAIL_V_FULL" and v.slot_idx == slot and "real_kv_hash" in v.fail_reasons for v in violations
    )


def test_fp4_scale_corruption_is_a_blind_spot():
    """The FP4 pool keeps per-block scales beside the packed values; the canary hashes the packed
    K/V rows only, so a changed scale (which changes every dequantized value of its block) is not seen."""
    served = node("mha-fp4")
    first, second = traffic(served)
    served.pool.k_scale_buffer[0][served.slot_of(first, 3)] ^= 1
    served.forward([first, second], [[7], [8]])
    assert served.reported() == []


def test_a_remapped_swa_slot_in_deepseek_v4_is_caught():
    served = node("dsv4")
    first, second = traffic(served)
    mapping = served.allocator.full_to_swa_index_mapping
    slot, other = served.slot_of(first, first.kv_len - 2), served.slot_of(second, second.kv_len - 2)
    mapping[slot] = mapping[other]
    served.forward([first, second], [[7], [8]])
    assert any(v.launch_tag.endswith("_K_SWA") and "position" in v.fail_reasons for v in served.reported())


def head_k_swa_runs(served: PagedNode) -> int:
    assert served.canary is not None
    return typing.cast(dict[str, int], served.canary.stats_snapshot()["kernel_runs"])["HEAD_K_SWA"]


class TestDeepSeekV4BlindSpots:
    """What the DeepSeek-V4 adapter leaves unguarded (docs/SGLANG.md): each corruption below changes
    state attention reads, and the canary reports nothing."""

    def run_after(self, corrupt) -> list:
        served = node("dsv4")
        first, second = traffic(served)
        runs = head_k_swa_runs(served)
        corrupt(served, first)
        served.forward([first, second], [[7], [8]])
        assert head_k_swa_runs(served) > runs  # the canary did verify
        return served.reported()

    def test_the_compressed_pools_are_unguarded(self):
        def flip_compressed(served: PagedNode, first: Request) -> None:
            # The C4 pool keeps one entry per 4 tokens (full-pool slot // 4), page_size // 4 a page.
            pool = served.pool.kv_pools[4]
            entry = served.slot_of(first, first.kv_len - 5) // 4
            page = pool.kv_buffer[0][entry // pool.page_size]  # its one layer: the model's C4 layer
            before = int(page[0])
            page[0] ^= 1
            assert int(page[0]) != before

        assert self.run_after(flip_compressed) == []

    def test_the_swa_latent_bytes_are_unhashed(self):
        def flip_latent(served: PagedNode, first: Request) -> None:
            swa_slot = int(served.allocator.full_to_swa_index_mapping[served.slot_of(first, first.kv_len - 1)])
            swa = served.pool.swa_kv_pool
            swa.kv_buffer[0][swa_slot // swa.page_size, 0] ^= 1  # a byte of that slot's page

        assert self.run_after(flip_latent) == []

    def test_positions_out_of_the_window_are_unguarded(self):
        def remap_old_position(served: PagedNode, first: Request) -> None:
            served.req_to_token_pool.req_to_token[first.row, 0] = served.slot_of(first, 1)

        assert self.run_after(remap_old_position) == []
