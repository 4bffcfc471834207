"""A request's KV moved from a prefill node to a decode node by SGLang 0.5.23's own transfer code.

What is SGLang's: each side's transfer registration (``get_kv_transfer_buf_infos`` and
``setup_state_kv_args``, which read the pools' ``get_contiguous_buf_infos`` /
``get_state_buf_infos``: the lists the canary's adapters extend), the page indices each side
computes for a request (``kv_to_page_indices`` over ``req_to_token``, the SWA window translated
through ``translate_swa_indices_for_transfer``, as ``disaggregation/prefill.py`` and ``decode.py``
do) and the transfer itself: ``NixlKVManager.send_kvcache`` and ``maybe_send_extra``, which split
the buffer lists into K and V halves (or pair them one for one on MLA-style pools) and turn page
indices into byte ranges. What stands in: the NIXL agent, replaced by one that copies those byte
ranges within this process (both nodes live here), and the bootstrap handshake that tells each
side the other's pointers, replaced by reading them off the decode node directly.
"""

from __future__ import annotations

import ctypes
import dataclasses
from typing import Any

import numpy as np
from sglang.srt.disaggregation.base.conn import KVArgs
from sglang.srt.disaggregation.nixl.conn import NixlKVManager
from sglang.srt.disaggregation.utils import get_kv_transfer_buf_infos, setup_state_kv_args
from sglang.srt.mem_cache.common import kv_to_page_indices

from tests.unit.sglang.paged_node import PagedNode, Request


class CopyingAgent:
    """The three calls ``NixlKVManager`` makes on a NIXL agent for a non-prepped WRITE, with the
    write done by ``memmove``: descriptors are (address, length, device) rows."""

    def get_xfer_descs(self, requests: np.ndarray, mem_kind: str) -> np.ndarray:
        return requests

    def initialize_xfer(self, op: str, src: np.ndarray, dst: np.ndarray, peer: str) -> tuple[np.ndarray, np.ndarray]:
        assert op == "WRITE" and src.shape == dst.shape, (op, src.shape, dst.shape)
        return src, dst

    def transfer(self, handle: tuple[np.ndarray, np.ndarray]) -> str:
        for (src_addr, src_len, _), (dst_addr, dst_len, _) in zip(*handle, strict=True):
            assert src_len == dst_len
            ctypes.memmove(int(dst_addr), int(src_addr), int(src_len))
        return "DONE"


def transfer_args(node: PagedNode) -> KVArgs:
    """What a node registers for transfer, as SGLang's prefill and decode schedulers build it."""
    kv_args = KVArgs()
    kv_args.kv_data_ptrs, kv_args.kv_data_lens, kv_args.kv_item_lens = get_kv_transfer_buf_infos(node.pool)
    kv_args.prefill_start_layer = 0
    kv_args.gpu_id = 0
    kv_args.page_size = node.page_size
    setup_state_kv_args(kv_args, node.pool, None, node.pool.layer_num)
    return kv_args


def sender(prefill: PagedNode) -> NixlKVManager:
    """SGLang's NIXL transfer manager of the prefill node, without its agent threads and sockets
    (``__new__``: ``__init__`` starts them); only the attributes the send path reads are set."""
    manager = NixlKVManager.__new__(NixlKVManager)
    manager.kv_args = transfer_args(prefill)
    manager.prep_handles = {}  # no prepared descriptor lists: the generic path
    manager.is_mla_backend = prefill.mode == "dsv4"  # DeepSeek-V4 is served by an MLA backend
    manager.pp_size = 1
    manager.attn_tp_size = manager.state_tp_size = 1
    manager.src_mem_kind = "DRAM"
    manager.agent = CopyingAgent()
    manager._state_layout_rejections = {}
    manager._prepared_state_plans = {}
    return manager


@dataclasses.dataclass(frozen=True, kw_only=True)
class PagePlan:
    """The page indices of one request on one side: full-pool KV pages, and the SWA state pages of
    the last window (one list per state component; empty without one)."""

    kv_pages: np.ndarray
    state_pages: list[np.ndarray]


def page_plan(node: PagedNode, request: Request, seq_len: int) -> PagePlan:
    kv_pages = kv_to_page_indices(node.slots_of(request, seq_len), node.page_size).astype(np.int32)
    window = getattr(node.pool, "sliding_window", None) or node.window
    if window is None:
        return PagePlan(kv_pages=kv_pages, state_pages=[])
    start = max(0, seq_len - window) // node.page_size * node.page_size
    swa_slots = node.allocator.translate_swa_indices_for_transfer(node.slots_of(request, seq_len)[start:])
    return PagePlan(kv_pages=kv_pages, state_pages=[kv_to_page_indices(swa_slots, node.page_size).astype(np.int32)])


def send(
    manager: NixlKVManager,
    decode: PagedNode,
    source: PagePlan,
    destination: PagePlan,
    *,
    send_kv: bool = True,
    send_state: bool = True,
) -> None:
    """The prefill side's last-chunk send: the KV pages, then the state components."""
    peer = transfer_args(decode)
    if send_kv:
        manager.send_kvcache(
            "decode", source.kv_pages, peer.kv_data_ptrs, destination.kv_pages, dst_gpu_id=0, dst_mem_kind="DRAM"
        )
    if send_state and peer.state_types:
        handles: list[Any] = list(
            manager.maybe_send_extra(
                "decode",
                source.state_pages,
                peer.state_data_ptrs,
                destination.state_pages,
                dst_gpu_id=0,
                decode_tp_size=1,
                dst_state_item_lens=peer.state_item_lens,
            )
        )
        assert handles, "no state component was sent"
