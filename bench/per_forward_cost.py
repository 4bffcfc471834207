"""Per-forward canary time: plans + HEAD and TAIL verify/write for every group and K/V half.

Decode batches of 1/32/256/1024 requests over prefixes of 0/1k/4k/16k tokens and extend batches
of 512 and 4096 new tokens, in `mha` and `swa` layouts, with real-KV hashing none/partial/all,
eager and under CUDA-graph replay. The model's own forward is not run: the numbers are the
canary's cost alone. Pools use Llama-8B-shaped rows (8 KV heads x 128 x bf16 = 2 KiB per layer
and half) over 4 layers where real-KV hashing is timed; without hashing the row size does not
matter and a 16-byte row keeps 16M-slot pools small.

    python bench/per_forward_cost.py [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.timing import time_eager_us, time_graph_us
from kv_canary import CanaryConfig, KernelBackend, RealKvHashMode
from kv_canary.adapters import attach_canary_buffers
from kv_canary.forward_rows import ForwardRows
from kv_canary.manager import CanaryManager

SWA_WINDOW = 1024
REAL_KV_LAYERS = 4
MAX_SLOTS_WITH_REAL_KV = 1 << 21


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


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Case:
    kind: str  # decode | extend
    batch: int
    prefix: int
    new_tokens: int  # per request

    @property
    def label(self) -> str:
        return f"{self.kind} bs={self.batch} prefix={self.prefix} new={self.batch * self.new_tokens}"

    @property
    def slots(self) -> int:
        return self.batch * (self.prefix + self.new_tokens) + 1


def cases(quick: bool) -> list[Case]:
    decode = [
        Case(kind="decode", batch=b, prefix=p, new_tokens=1) for b in (1, 32, 256, 1024) for p in (0, 1024, 4096, 16384)
    ]
    extend = [
        Case(kind="extend", batch=4, prefix=1024, new_tokens=128),
        Case(kind="extend", batch=4, prefix=1024, new_tokens=1024),
    ]
    if quick:
        return [c for c in decode if c.batch * c.prefix <= 256 * 4096] + extend
    return decode + extend


def build(case: Case, mode: str, real_kv: RealKvHashMode, device: str):
    """A pool, its canary, and the forward rows of one step of ``case`` with valid records."""
    hashed = real_kv is not RealKvHashMode.NONE
    layers, row = (REAL_KV_LAYERS, 8 * 128) if hashed else (1, 8)
    generator = torch.Generator(device=device).manual_seed(0)
    if mode == "mha":
        pool = MHATokenToKVPool(case.slots, layers, row, device)
    else:
        swa_slots = case.batch * (min(case.prefix, SWA_WINDOW) + case.new_tokens) + 1
        pool = SWAKVPool(case.slots, swa_slots, layers, row, device)
    config = CanaryConfig(
        backend=KernelBackend.AUTO,
        real_kv_hash=real_kv,
        stats_interval=0,
        health_check_interval=0,
        verify_capacity=case.batch * case.prefix + 1,
        write_capacity=case.batch * (case.prefix + case.new_tokens),
        max_requests_per_forward=case.batch,
    )
    groups = attach_canary_buffers(pool, config=config, swa_window=SWA_WINDOW)
    manager = CanaryManager(
        config=config, groups=groups, device=torch.device(device), logger=__import__("logging").getLogger("bench")
    )
    length = case.prefix + case.new_tokens
    slots = torch.randperm(case.slots - 1, device=device, generator=generator)[: case.batch * length] + 1
    req_to_token = torch.zeros(case.batch + 1, length, dtype=torch.int32, device=device)
    req_to_token[1:] = slots.view(case.batch, length).to(torch.int32)
    if mode == "swa":
        in_window = torch.arange(length, device=device) >= case.prefix - SWA_WINDOW
        resident = req_to_token[1:, in_window].flatten().to(torch.int64)
        pool.full_to_swa_index_mapping[resident] = torch.arange(1, resident.numel() + 1, device=device)
    tokens = torch.randint(0, 128_000, (case.batch + 1, length), device=device, generator=generator)

    def rows(prefix: int, new: int, hints: bool) -> ForwardRows:
        new_slots = req_to_token[1:, prefix : prefix + new].flatten().to(torch.int64)
        return ForwardRows(
            req_pool_indices=torch.arange(1, case.batch + 1, device=device),
            prefix_lens=torch.full((case.batch,), prefix, device=device),
            extend_lens=torch.full((case.batch,), new, device=device),
            out_cache_loc=new_slots,
            input_ids=tokens[1:, prefix : prefix + new].contiguous().view(-1),
            positions=torch.arange(prefix, prefix + new, device=device).repeat(case.batch),
            req_to_token=req_to_token,
            req_token_ids=tokens,
            prefix_lens_host=(prefix,) * case.batch if hints else None,
            extend_lens_host=(new,) * case.batch if hints else None,
            max_extend_len=new,
        )

    if case.prefix:
        manager.before_forward(rows(0, case.prefix, hints=True))  # write the prefix's records once
        manager.after_forward()
    return manager, rows(case.prefix, case.new_tokens, hints=True), rows(case.prefix, case.new_tokens, hints=False)


def measure(case: Case, mode: str, real_kv: RealKvHashMode, device: str) -> dict[str, object]:
    manager, eager_rows, graph_rows = build(case, mode, real_kv, device)

    def eager() -> None:
        manager.before_forward(eager_rows)
        manager.after_forward()

    def captured() -> None:
        manager.before_forward(graph_rows)
        manager.after_forward()

    # The same step is repeated: its writes rewrite identical records, so it stays clean.
    eager_us = time_eager_us(eager, iterations=20, warmup=10)
    graph_us = time_graph_us(captured, launches_per_graph=1, replays=20)
    return {
        "case": case.label,
        "mode": mode,
        "real_kv": real_kv.value,
        "eager_us": eager_us,
        "graph_us": graph_us,
        "violations": int(manager.state.ring.write_index),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=pathlib.Path)
    parser.add_argument("--quick", action="store_true", help="skip the 16M-entry cases")
    args = parser.parse_args()
    device = "cuda"
    print(
        f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {__import__('triton').__version__}"
    )
    print("| case | mode | real KV | eager us | graph us | violations |")
    print("|---|---|---|---|---|---|")
    results = []
    for case in cases(args.quick):
        for mode in ("mha", "swa"):
            for real_kv in RealKvHashMode:
                if real_kv is not RealKvHashMode.NONE and case.slots > MAX_SLOTS_WITH_REAL_KV:
                    continue
                row = measure(case, mode, real_kv, device)
                results.append(row)
                print(
                    f"| {case.label} | {mode} | {real_kv.value} | {row['eager_us']:.1f} | {row['graph_us']:.1f} | "
                    f"{row['violations']} |",
                    flush=True,
                )
                torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": results}, indent=2))


if __name__ == "__main__":
    main()
