"""A canary over a synthetic radix cache whose every cached slot holds valid records, for the sweep benchmarks."""

from __future__ import annotations

import dataclasses

import torch

from bench.fixtures import MHATokenToKVPool, RadixCache, batch_rows, manager_for, synthetic_cache
from kv_canary import CanaryConfig, RealKvHashMode
from kv_canary.manager import CanaryManager

NODE_TOKENS = 64
BRANCHES = 1024
REAL_KV_LAYERS = 4
ROW_ELEMENTS = 128  # bf16: 256-byte rows; `partial` reads one 32-byte sector of a row whatever its size


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SweptCache:
    manager: CanaryManager
    cache: RadixCache
    nodes: int


def swept_cache(
    slots: int,
    real_kv: RealKvHashMode,
    device: str,
    *,
    step_nodes: int,
    step_tokens: int,
    interval: int = 1,
    branches: int = BRANCHES,
) -> SweptCache:
    """``slots`` cached tokens in chains of ``NODE_TOKENS``-token nodes under up to ``branches`` branches,
    written as one prefill would."""
    nodes = slots // NODE_TOKENS
    branches = min(branches, nodes)
    hashed = real_kv is not RealKvHashMode.NONE
    pool = MHATokenToKVPool(slots + 1, REAL_KV_LAYERS if hashed else 1, ROW_ELEMENTS if hashed else 8, device)
    config = CanaryConfig(
        real_kv_hash=real_kv,
        sweep_interval=interval,
        sweep_step_nodes=step_nodes,
        sweep_step_tokens=step_tokens,
        stats_interval=0,
        health_check_interval=0,
    )
    manager = manager_for(pool, config, swa_window=None, device=device)
    cache = synthetic_cache(slots, node_tokens=NODE_TOKENS, branches=branches, device=device)
    # Chain b holds nodes b, b + branches, ...; node i holds slots i * NODE_TOKENS + 1 ... and its key's
    # token j is (i + j) % 251 (bench.fixtures.synthetic_cache).
    per_chain = nodes // branches
    node = torch.arange(branches, device=device)[:, None] + branches * torch.arange(per_chain, device=device)[None, :]
    offset = torch.arange(NODE_TOKENS, device=device)
    slot_rows = (node[:, :, None] * NODE_TOKENS + 1 + offset).reshape(branches, -1)
    token_rows = ((node[:, :, None] + offset) % 251).reshape(branches, -1)
    req_to_token = torch.zeros(branches + 1, slot_rows.shape[1], dtype=torch.int32, device=device)
    req_to_token[1:] = slot_rows.to(torch.int32)
    tokens = torch.zeros(branches + 1, slot_rows.shape[1], dtype=torch.int64, device=device)
    tokens[1:] = token_rows
    rows = batch_rows(req_to_token, tokens, batch=branches, prefix=0, new=slot_rows.shape[1], hints=True)
    manager.before_forward(rows)
    manager.after_forward()
    manager.attach_prefix_cache(cache)
    return SweptCache(manager=manager, cache=cache, nodes=nodes)
