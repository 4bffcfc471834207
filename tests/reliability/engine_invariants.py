"""Bookkeeping invariants of the mock engine, checked between forwards.

Every full-pool page is exactly one of: free, held by the radix cache, or a running request's
own; every SWA slot likewise; lock refs are exactly the running requests' locks; reservations
add up; every position a request's next forward reads through its window is SWA-resident. A leak,
a double hand-out or a stale lock shows up here long before it corrupts anything.
"""

from __future__ import annotations

import collections
import math

from mock_models.engine.engine import Engine
from mock_models.engine.radix_cache import RadixCache
from mock_models.engine.req_to_token_pool import PADDING_ROW, ReqToTokenPool


def check_engine_invariants(engine: Engine) -> None:
    config = engine.config
    running = list(engine.scheduler.running)
    tree = engine.radix_cache
    assert isinstance(tree, RadixCache)  # the engine's own memory backend: its sizes are checked here
    nodes = list(tree.nodes())
    page_size = config.page_size

    assert all(len(node.key) % page_size == 0 for node in nodes), "a radix node is not page-aligned"
    tree_pages = sum(len(node.key) for node in nodes) // page_size
    # A forward in flight (overlap scheduling) has allocated past kv_len: those slots are the request's too.
    own_pages = sum(math.ceil((req.allocated_len - req.tree_owned_len) / page_size) for req in running)
    free_pages = engine.full_allocator.available_pages()
    assert free_pages + tree_pages + own_pages == config.num_pages, (
        f"full pages leak or are handed out twice: free {free_pages} + radix {tree_pages} + requests' own "
        f"{own_pages} != {config.num_pages}"
    )

    if engine.swa_allocator is not None:
        resident = tree.swa_resident_size()
        own_swa = sum(req.allocated_len - max(req.swa_released_len, req.tree_owned_len) for req in running)
        free_swa = engine.swa_allocator.available_size()
        assert free_swa + resident + own_swa == config.swa_pool_size, (
            f"SWA slots leak or are handed out twice: free {free_swa} + radix-resident {resident} + requests' "
            f"own {own_swa} != {config.swa_pool_size}"
        )
        _check_windows_resident(engine, running)

    locks: collections.Counter[int] = collections.Counter()
    for req in running:
        node = req.last_node
        while node is not None and node is not tree.root_node:
            locks[node.id] += 1
            node = node.parent
    wrong = {node.id: (node.lock_ref, locks[node.id]) for node in nodes if node.lock_ref != locks[node.id]}
    assert not wrong, f"lock refs (have, expected) differ from the running requests' locks: {wrong}"

    kv_cache = engine.kv_cache
    assert kv_cache.reserved_pages == sum(req.full_pages_reserved for req in running) >= 0
    assert kv_cache.reserved_swa_slots == sum(req.swa_slots_reserved for req in running) >= 0
    rows = engine.req_to_token_pool
    assert isinstance(rows, ReqToTokenPool)
    held = sorted(req.req_pool_idx for req in running)
    assert PADDING_ROW not in held and len(set(held)) == len(held)
    assert sorted(rows.free_rows + held) == list(range(1, rows.size + 1)), "request rows leak"


def check_engine_idle(engine: Engine) -> None:
    """Nothing running: every page is free or cached, no lock, no reservation."""
    assert not engine.has_work()
    check_engine_invariants(engine)
    assert all(node.lock_ref == 0 for node in engine.radix_cache.nodes())
    assert engine.kv_cache.reserved_pages == 0 and engine.kv_cache.reserved_swa_slots == 0


def _check_windows_resident(engine: Engine, running: list) -> None:
    mapping = engine.swa_allocator.full_to_swa_index_mapping
    window = engine.config.swa_window
    req_to_token = engine.req_to_token_pool.req_to_token
    for req in running:
        first = max(0, req.kv_len - window)
        if req.kv_len == first:
            continue
        slots = req_to_token[req.req_pool_idx, first : req.kv_len].long()
        missing = (mapping[slots] == 0).nonzero().flatten().tolist()
        assert not missing, (
            f"request {req.rid}: window positions {[first + i for i in missing]} have no SWA "
            f"slot, but its next forward reads them"
        )
