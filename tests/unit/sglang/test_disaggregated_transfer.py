"""Canary records travel with their KV through SGLang 0.5.23's disaggregated transfer.

A prefill node computes two prompts on SGLang's real pools with the canary installed; SGLang's
own transfer code (``pd_transfer.py``: registration, page indices, ``NixlKVManager``'s K/V split
and byte ranges, with the NIXL agent replaced by an in-process copy) moves one request's KV and
records to a decode node's real pools; the decode node runs the request's first decode forward,
whose canary verifies every position it reads. A faithful transfer stays clean; a transfer that
drops a component, misorders pages or delivers another request's pages is caught there.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from kv_canary import CanaryConfig, KernelBackend, RealKvHashMode
from kv_canary.launch_tags import KvHalf
from tests.unit.sglang.paged_node import PagedNode, Request
from tests.unit.sglang.pd_transfer import PagePlan, page_plan, send, sender, transfer_args

pytestmark = pytest.mark.sglang

MODES = ("mha", "swa", "dsv4")


def node(mode: str) -> PagedNode:
    config = CanaryConfig(
        backend=KernelBackend.TORCH,
        stats_interval=0,
        health_check_interval=0,
        verify_capacity=1024,
        write_capacity=512,
        max_requests_per_forward=8,
        real_kv_hash=RealKvHashMode.NONE if mode == "dsv4" else RealKvHashMode.PARTIAL,
    )
    if mode == "dsv4":  # pages of 256 tokens, a window of 8 that spans two pages here
        return PagedNode(config, mode=mode, size=2048, swa_size=2048, window=8, max_context=600)
    return PagedNode(config, mode=mode, page_size=4, size=128, swa_size=128, window=8)


def prompt_len(mode: str) -> int:
    return 260 if mode == "dsv4" else 14  # both end mid-page, the window crossing a page boundary


@dataclasses.dataclass
class Disaggregated:
    prefill: PagedNode
    decode: PagedNode
    sent: Request  # on the prefill node
    other: Request  # another request the prefill node computed alongside
    received: Request  # the same request on the decode node, its slots preallocated
    seq_len: int

    def plans(self) -> tuple[PagePlan, PagePlan]:
        return page_plan(self.prefill, self.sent, self.seq_len), page_plan(self.decode, self.received, self.seq_len)

    def first_decode(self) -> list:
        """The decode node's first forward: the token the prefill sampled, after the prompt."""
        self.received.kv_len = self.seq_len
        self.decode.forward([self.received], [[777]])
        return self.decode.reported()


def prefilled(mode: str) -> Disaggregated:
    prefill, decode = node(mode), node(mode)
    length = prompt_len(mode)
    sent = prefill.admit([10 + i % 400 for i in range(length)])
    other = prefill.admit([500 + i % 400 for i in range(length)])
    prefill.forward([sent, other])
    assert prefill.reported() == []
    received = decode.admit(list(sent.tokens))
    decode.allocate([received])  # the decode side preallocates the request's slots
    return Disaggregated(prefill=prefill, decode=decode, sent=sent, other=other, received=received, seq_len=length)


def transfer(pd: Disaggregated, source: PagePlan | None = None, destination: PagePlan | None = None, **what) -> None:
    own_source, own_destination = pd.plans()
    send(sender(pd.prefill), pd.decode, source or own_source, destination or own_destination, **what)


def reasons(violations) -> set[str]:
    return {reason for v in violations for reason in v.fail_reasons}


def test_records_sit_in_the_half_of_the_kv_they_describe():
    """SGLang splits the K/V list in halves: the K records end the K half, the V records the V half."""
    prefill = node("swa")
    full, swa = prefill.canary.groups
    args = transfer_args(prefill)
    for group, pointers, item_lens in (
        (full, args.kv_data_ptrs, args.kv_item_lens),
        (swa, args.state_data_ptrs[0], args.state_item_lens[0]),
    ):
        half = len(pointers) // 2
        k_records = [group.halves[KvHalf.K].head.data_ptr(), group.halves[KvHalf.K].tail.data_ptr()]
        v_records = [group.halves[KvHalf.V].head.data_ptr(), group.halves[KvHalf.V].tail.data_ptr()]
        assert pointers[half - 2 : half] == k_records and pointers[-2:] == v_records
        assert item_lens[half - 1] == item_lens[-1] == 32 * prefill.page_size  # a page of 32-byte records
    dsv4 = node("dsv4")  # a flat list (MLA-style): the K-only records are appended
    (dsv4_group,) = dsv4.canary.groups
    k_records = dsv4_group.halves[KvHalf.K]
    assert transfer_args(dsv4).state_data_ptrs[0][-2:] == [k_records.head.data_ptr(), k_records.tail.data_ptr()]


@pytest.mark.parametrize("mode", MODES)
def test_a_faithful_transfer_arrives_clean(mode):
    pd = prefilled(mode)
    transfer(pd)
    assert pd.first_decode() == []
    for _ in range(3):
        pd.decode.forward([pd.received], [[778]])
    assert pd.decode.reported() == []


@pytest.mark.parametrize("mode", MODES)
def test_records_left_behind_are_caught(mode):
    """The same transfer with the canary's records not moved: the decode node reads unwritten records."""
    pd = prefilled(mode)
    for group in pd.prefill.canary.groups:  # the prefill's records zeroed just before sending them
        for half in group.halves.values():
            half.head.zero_()
            half.tail.zero_()
    transfer(pd)
    assert {"chain_hash", "position"} <= reasons(pd.first_decode())


@pytest.mark.parametrize(
    ("mode", "dropped", "caught_by"),
    [
        ("mha", {"send_kv": False}, "_FULL"),
        ("swa", {"send_kv": False}, "_FULL"),
        ("swa", {"send_state": False}, "_SWA"),  # the SWA state never moved (sgl-project/sglang#24878)
        ("dsv4", {"send_state": False}, "_K_SWA"),
    ],
    ids=["mha-kv", "swa-kv", "swa-state", "dsv4-state"],
)
def test_a_dropped_component_is_caught(mode, dropped, caught_by):
    pd = prefilled(mode)
    transfer(pd, **dropped)
    violations = pd.first_decode()
    assert any(v.launch_tag.endswith(caught_by) for v in violations)
    assert {"chain_hash", "position"} <= reasons(violations)


def test_dropping_deepseek_v4_compressed_kv_is_a_blind_spot():
    """Its full-pool KV list is the compressed pools and indexer, which the canary does not guard."""
    pd = prefilled("dsv4")
    transfer(pd, send_kv=False)
    assert pd.first_decode() == []


def swap_last_two(pages: np.ndarray) -> np.ndarray:
    swapped = pages.copy()
    swapped[[-2, -1]] = swapped[[-1, -2]]
    return swapped


@pytest.mark.parametrize("mode", MODES)
def test_misordered_pages_are_caught(mode):
    pd = prefilled(mode)
    _, destination = pd.plans()
    misordered = PagePlan(
        kv_pages=swap_last_two(destination.kv_pages), state_pages=[swap_last_two(p) for p in destination.state_pages]
    )
    transfer(pd, destination=misordered)
    assert {"position", "chain_hash"} <= reasons(pd.first_decode())


@pytest.mark.parametrize("mode", MODES)
def test_a_page_of_another_request_is_caught(mode):
    """The last page (KV and window state) comes from the other request the prefill node computed."""
    pd = prefilled(mode)
    source, _ = pd.plans()
    foreign = page_plan(pd.prefill, pd.other, pd.seq_len)
    mixed = PagePlan(
        kv_pages=np.concatenate([source.kv_pages[:-1], foreign.kv_pages[-1:]]),
        state_pages=[
            np.concatenate([own[:-1], theirs[-1:]])
            for own, theirs in zip(source.state_pages, foreign.state_pages, strict=True)
        ],
    )
    transfer(pd, source=mixed)
    violations = pd.first_decode()
    assert "chain_hash" in reasons(violations)  # the page's first record chains from the other request's record


def test_a_whole_other_request_needs_the_token_table():
    """Every page of another request of the same length: positions and chain hashes are consistent
    among themselves, so only the token check tells, and SGLang keeps no recorded tokens (its
    pools lack ``req_token_ids``). The decode node knows the prompt it asked for: given the table,
    the canary sees the swap."""
    for with_tokens in (False, True):
        pd = prefilled("mha")
        if with_tokens:
            table = torch.full_like(pd.decode.req_to_token_pool.req_to_token, -1, dtype=torch.int64)
            table[pd.received.row, : pd.seq_len + 1] = torch.tensor(pd.received.tokens + [777])
            pd.decode.req_to_token_pool.req_token_ids = table
        transfer(pd, source=page_plan(pd.prefill, pd.other, pd.seq_len))
        violations = pd.first_decode()
        if with_tokens:
            assert "token" in reasons(violations)
        else:
            assert violations == []
