"""The sweep's device pass over 1M and 8M cached slots, against the device's copy bandwidth.

A synthetic radix cache (chains of 64-token nodes under 1024 branches, every record valid) is listed
into one slice and verified by one launch: per K/V half the HEAD records and the TAIL records, the
TAIL ones either alone (`none`) or with the real-KV hash (`partial`: the first 16 bytes of the
slot's row in each of 4 layers). The launch is timed with CUDA events; listing the cache and
building the segment table, the host's part, is timed apart (bench.sweep_host_cost shows how a
round is spread over forwards).

Bytes counted per cached slot are those a pass must read: its slot (8 B, the node's int64 value),
its token id (4 B) and its four records (4 x 32 B), 140 B; `partial` adds 2 x 4 x 16 B of real
K/V, pieces of rows far apart that each cost a whole 32-byte sector (about 1.4x the bytes counted).

    python -m bench.sweep_throughput [--json out.json] [--warm none|partial]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from typing import Any

import torch

from bench.fixtures import copy_bandwidth_gbps
from bench.sweep_fixture import REAL_KV_LAYERS, swept_cache
from bench.timing import time_eager_us
from kv_canary import RealKvHashMode
from kv_canary.kernels.sweep_launch import TritonSweep
from kv_canary.plans import SweepSlice
from kv_canary.sweep.radix_cursor import RadixCursor

GOAL_OF_COPY = 0.80  # at 1M cached slots, real KV none
PARTIAL_BYTES = 16
REAL_KV = (RealKvHashMode.NONE, RealKvHashMode.PARTIAL)


def bytes_per_slot(real_kv: RealKvHashMode) -> int:
    hashed = 2 * REAL_KV_LAYERS * PARTIAL_BYTES if real_kv is RealKvHashMode.PARTIAL else 0
    return 8 + 4 + 4 * 32 + hashed


def measure(slots: int, real_kv: RealKvHashMode, device: str) -> dict[str, Any]:
    swept = swept_cache(slots, real_kv, device, step_nodes=1 << 30, step_tokens=1 << 40)
    manager = swept.manager
    started = time.perf_counter()
    listed = RadixCursor(device=torch.device(device)).next_slice(swept.cache, max_nodes=1 << 30, max_tokens=1 << 40)
    listed_s = time.perf_counter() - started
    sweep = manager.kernels.sweep
    if not isinstance(sweep, TritonSweep):
        raise TypeError(f"this benchmark times the Triton sweep; the install runs {manager.kernels.name} kernels")
    started = time.perf_counter()
    prepared = sweep.prepare_segments(listed.segments)
    table_s = time.perf_counter() - started
    device_us = time_eager_us(lambda: sweep.launch_segments(prepared), iterations=10, warmup=2, rounds=3)
    gbps = slots * bytes_per_slot(real_kv) / device_us / 1e3
    return {
        "slots": slots,
        "nodes": swept.nodes,
        "real_kv": real_kv.value,
        "device_us": device_us,
        "gbps": gbps,
        "host_list_s": listed_s,
        "host_table_s": table_s,
        "round_completed": listed.round_completed,
        "violations": int(manager.state.ring.write_index),
    }


def warm(device: str, real_kv: RealKvHashMode) -> None:
    """Compile the kernel variants the measurements launch, in a tiny cache of the same shape: 64-token
    nodes (the sweep's block) in chains of 1024 tokens or more (the prefill's write block)."""
    swept = swept_cache(16 * 64, real_kv, device, step_nodes=1 << 30, step_tokens=1 << 40, branches=1)
    listed = RadixCursor(device=torch.device(device)).next_slice(swept.cache, max_nodes=1 << 30, max_tokens=1 << 40)
    swept.manager.kernels.sweep.verify(SweepSlice(segments=listed.segments), verify=None)
    torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=pathlib.Path)
    parser.add_argument(
        "--warm",
        choices=[mode.value for mode in REAL_KV],
        help="only compile the kernel variants the rows of this real-KV setting launch",
    )
    args = parser.parse_args()
    device = "cuda"
    if args.warm:
        warm(device, RealKvHashMode(args.warm))
        return
    copy = copy_bandwidth_gbps(device)
    print(f"device {torch.cuda.get_device_name()}, copy bandwidth {copy:.0f} GB/s (read + write)")
    print(
        "| cached slots | real KV | device us / pass | slots/s | GB/s | of copy | host: list s | host: table s "
        "| violations |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for slots in (1 << 20, 8 << 20):
        for real_kv in REAL_KV:
            row = measure(slots, real_kv, device)
            rows.append(row)
            print(
                f"| {slots} | {real_kv.value} | {row['device_us']:.0f} | {slots / row['device_us'] / 1e3:.2f} G | "
                f"{row['gbps']:.0f} | {100 * row['gbps'] / copy:.0f}% | {row['host_list_s']:.2f} | "
                f"{row['host_table_s']:.2f} | {row['violations']} |",
                flush=True,
            )
            torch.cuda.empty_cache()
    goal_row = next(row for row in rows if row["slots"] == 1 << 20 and row["real_kv"] == "none")
    fraction = goal_row["gbps"] / copy
    print("\n| goal | figure | held |")
    print("|---|---|---|")
    held = fraction >= GOAL_OF_COPY
    print(f"| sweep pass, 1M cached slots, none >= {GOAL_OF_COPY:.0%} of copy | {fraction:.0%} | {held} |")
    if args.json:
        args.json.write_text(
            json.dumps({"device": torch.cuda.get_device_name(), "copy_gbps": copy, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
