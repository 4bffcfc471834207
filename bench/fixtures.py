"""What the benchmarks share: pools named like SGLang's, forward rows over random slots, a synthetic radix cache."""

from __future__ import annotations

import logging

import torch

from kv_canary import CanaryConfig
from kv_canary.adapters import attach_canary_buffers
from kv_canary.forward_rows import ForwardRows
from kv_canary.manager import CanaryManager

LOGGER = logging.getLogger("bench")


class MHATokenToKVPool:
    def __init__(self, slots: int, layers: int, row_elements: int, device: str) -> None:
        self.page_size = 1
        self.k_buffer = [torch.zeros(slots, row_elements, dtype=torch.bfloat16, device=device) for _ in range(layers)]
        self.v_buffer = [torch.zeros(slots, row_elements, dtype=torch.bfloat16, device=device) for _ in range(layers)]


class SWAKVPool:
    def __init__(self, slots: int, swa_slots: int, layers: int, row_elements: int, device: str) -> None:
        self.page_size = 1
        self.full_kv_pool = MHATokenToKVPool(slots, layers, row_elements, device)
        self.swa_kv_pool = MHATokenToKVPool(swa_slots, layers, row_elements, device)
        self.full_to_swa_index_mapping = torch.zeros(slots, dtype=torch.int64, device=device)


def manager_for(pool: object, config: CanaryConfig, *, swa_window: int | None, device: str) -> CanaryManager:
    groups = attach_canary_buffers(pool, config=config, swa_window=swa_window)
    return CanaryManager(config=config, groups=groups, device=torch.device(device), logger=LOGGER)


def batch_rows(
    req_to_token: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    batch: int,
    prefix: int,
    new: int,
    hints: bool,
    decode_form: bool = False,
) -> ForwardRows:
    """Rows 1..batch each cache ``prefix`` tokens and write ``new``, from their ``req_to_token`` rows.

    ``decode_form`` gives a decode batch by its seq_lens alone, as SGLang's captured decode does;
    ``hints`` gives the host's lengths, as eager forwards have them.
    """
    device = req_to_token.device
    new_slots = req_to_token[1 : batch + 1, prefix : prefix + new].flatten().to(torch.int64)
    decode = decode_form and new == 1
    return ForwardRows(
        req_pool_indices=torch.arange(1, batch + 1, device=device),
        prefix_lens=None if decode else torch.full((batch,), prefix, device=device),
        extend_lens=None if decode else torch.full((batch,), new, device=device),
        seq_lens=torch.full((batch,), prefix + 1, device=device) if decode else None,
        out_cache_loc=new_slots,
        # A copy, as an engine's own tensor: a view's offset would change the alignment Triton
        # specializes on, and so the compiled variant, from one batch shape to the next.
        input_ids=token_ids[1 : batch + 1, prefix : prefix + new].flatten().clone(),
        positions=torch.arange(prefix, prefix + new, device=device).repeat(batch),
        req_to_token=req_to_token,
        req_token_ids=token_ids,
        prefix_lens_host=(prefix,) * batch if hints else None,
        extend_lens_host=(new,) * batch if hints else None,
        max_extend_len=new,
    )


def random_rows(
    *, batch: int, length: int, pool_slots: int, device: str, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(req_to_token, token ids): ``batch`` rows of ``length`` distinct random slots of a ``pool_slots`` pool."""
    generator = torch.Generator(device=device).manual_seed(seed)
    slots = torch.randperm(pool_slots - 1, device=device, generator=generator)[: batch * length] + 1
    req_to_token = torch.zeros(batch + 1, length, dtype=torch.int32, device=device)
    req_to_token[1:] = slots.view(batch, length).to(torch.int32)
    tokens = torch.randint(0, 128_000, (batch + 1, length), device=device, generator=generator)
    return req_to_token, tokens


def copy_bandwidth_gbps(device: str) -> float:
    """Bytes read plus written per second by a 1 GiB device-to-device copy: the ceiling the figures are held to."""
    from bench.timing import time_eager_us

    source = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)

    def copy() -> None:
        target.copy_(source)

    us = time_eager_us(copy, iterations=20, warmup=3)
    return 2 * source.numel() / us / 1e3


class RadixNode:
    __slots__ = ("children", "key", "lock_ref", "value")

    def __init__(self, key: list[int], value: torch.Tensor) -> None:
        self.key, self.value = key, value
        self.children: dict[object, RadixNode] = {}
        self.lock_ref = 0


class RadixCache:
    def __init__(self) -> None:
        self.root_node = RadixNode([], torch.zeros(0, dtype=torch.int64))


def synthetic_cache(slots: int, *, node_tokens: int, branches: int, device: str) -> RadixCache:
    """``branches`` chains of ``node_tokens``-token nodes holding slots 1..slots (token ids < 256, so that
    Python shares their int objects and an 8M-token tree fits in a few hundred MB of host memory)."""
    cache = RadixCache()
    values = torch.arange(1, slots + 1, device=device).view(-1, node_tokens)
    chains = [cache.root_node] * branches
    for index in range(values.shape[0]):
        branch = index % branches
        key = [(index + offset) % 251 for offset in range(node_tokens)]
        node = RadixNode(key, values[index])
        chains[branch].children[(branch, index)] = node
        chains[branch] = node
    return cache
