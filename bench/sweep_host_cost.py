"""The sweep's host time per forward against cache size: 1K to 8M cached slots, a round spread over steps.

A step (every `sweep_interval` forwards) lists the next nodes of the round (at most
`sweep_step_nodes`) and builds the Triton sweep's segment table from them; on a CUDA device it
also launches the verify (asynchronous: only its launch is host time). A round covers the
cache once; `steps / round` times the interval bounds the forwards within which every slot
cached throughout a round is verified. The first round meets every node for the first time
(its token ids converted, its segment built); later rounds reuse what they met, and cost a
dictionary look-up and a few identity checks per node (`kv_canary/sweep/radix_cursor.py`).

On the CPU (`--device cpu`, the default without CUDA) the step is the listing and the table,
the host work a GPU install does before its launch; the launch itself (about 10-20 us of
host time on a GPU) is not included there. The cache is synthetic (64-token nodes in chains
under up to 1024 branches, as bench.sweep_throughput). Amortised host time per forward is a
step's mean over `sweep_interval`: the table gives the step's time and the smallest interval
that keeps it within the goal (from the wall time), and the round's length in forwards then; the
calling thread's CPU time is given beside the wall time, which other processes can inflate.

    python -m bench.sweep_host_cost [--json out.json] [--step-nodes 64 256] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.fixtures import synthetic_cache
from bench.sweep_fixture import BRANCHES, NODE_TOKENS, swept_cache
from kv_canary import RealKvHashMode
from kv_canary.kernels.sweep_launch import segment_table
from kv_canary.sweep.radix_cursor import RadixCursor
from kv_canary.sweep.sweep_orchestrator import SweepOrchestrator

SIZES = (1 << 10, 1 << 13, 1 << 16, 1 << 19, 1 << 20, 1 << 23)
GOAL_US_PER_FORWARD = 50.0  # at 8M cached slots


def round_step_times(step: Callable[[], bool], device: str) -> tuple[list[float], float]:
    """Host (wall) microseconds of each step of one round (``step`` returns whether it completed the
    round), and the calling thread's CPU microseconds over the round (unlike the wall time, not
    inflated by other processes on a loaded machine)."""
    times = []
    completed = False
    cpu_started = time.thread_time()
    while not completed:
        started = time.perf_counter()
        completed = step()
        times.append((time.perf_counter() - started) * 1e6)
    cpu_us = (time.thread_time() - cpu_started) * 1e6
    if device == "cuda":
        torch.cuda.synchronize()
    return times, cpu_us


def cuda_step(slots: int, step_nodes: int) -> tuple[Callable[[], bool], int, Callable[[], int]]:
    """A whole sweep step of an install over the cache (listing, table, launch), its nodes, its violations."""
    swept = swept_cache(slots, RealKvHashMode.NONE, "cuda", step_nodes=step_nodes, step_tokens=1 << 40)
    orchestrator = SweepOrchestrator(manager=swept.manager)

    def step() -> bool:
        passes = orchestrator.passes
        orchestrator.run_step()
        return orchestrator.passes != passes

    return step, swept.nodes, lambda: int(swept.manager.state.ring.write_index)


def host_step(slots: int, step_nodes: int) -> tuple[Callable[[], bool], int, Callable[[], int]]:
    """The host's part of a step (listing and segment table), on the CPU; no records, so no violations."""
    cache = synthetic_cache(slots, node_tokens=NODE_TOKENS, branches=BRANCHES, device="cpu")
    cursor = RadixCursor(device=torch.device("cpu"))
    device = torch.device("cpu")

    def step() -> bool:
        listed = cursor.next_slice(cache, max_nodes=step_nodes, max_tokens=1 << 40)
        segment_table(listed.segments, device)
        return listed.round_completed

    return step, slots // NODE_TOKENS, lambda: 0


def measure(slots: int, step_nodes: int, device: str) -> dict[str, Any]:
    step, nodes, violations = (cuda_step if device == "cuda" else host_step)(slots, step_nodes)
    cold, _ = round_step_times(step, device)
    warm, warm_cpu_us = round_step_times(step, device)
    return {
        "slots": slots,
        "nodes": nodes,
        "step_nodes": step_nodes,
        "steps_per_round": len(warm),
        "cold_mean_us": statistics.mean(cold),
        "warm_mean_us": statistics.mean(warm),
        "warm_p99_us": sorted(warm)[min(len(warm) - 1, math.ceil(0.99 * len(warm)) - 1)],
        "warm_max_us": max(warm),
        "warm_us_per_node": sum(warm) / max(nodes, 1),
        "warm_cpu_us_per_step": warm_cpu_us / len(warm),
        "warm_cpu_us_per_node": warm_cpu_us / max(nodes, 1),
        "violations": violations(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=pathlib.Path)
    parser.add_argument("--step-nodes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--max-slots", type=int, default=SIZES[-1])
    args = parser.parse_args()
    device = args.device
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (listing + segment table; no launch)"
    print(f"device {name}, {NODE_TOKENS}-token nodes; host us per step = per forward at sweep_interval 1")
    print(
        "| cached slots | nodes | step nodes | steps / round | host us / step, 1st round | host us / step "
        "| p99 | max | us / node | thread CPU us / step | CPU us / node | interval for <= 50 us/forward "
        "| round in forwards then | violations |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for slots in (size for size in SIZES if size <= args.max_slots):
        for step_nodes in args.step_nodes:
            row = measure(slots, step_nodes, device)
            interval = max(1, math.ceil(float(row["warm_mean_us"]) / GOAL_US_PER_FORWARD))
            row["interval_for_goal"] = interval
            row["round_forwards_for_goal"] = interval * int(row["steps_per_round"])
            rows.append(row)
            print(
                f"| {slots} | {row['nodes']} | {step_nodes} | {row['steps_per_round']} | {row['cold_mean_us']:.0f} | "
                f"{row['warm_mean_us']:.0f} | {row['warm_p99_us']:.0f} | {row['warm_max_us']:.0f} | "
                f"{row['warm_us_per_node']:.2f} | {row['warm_cpu_us_per_step']:.0f} | "
                f"{row['warm_cpu_us_per_node']:.2f} | {interval} | {row['round_forwards_for_goal']} | "
                f"{row['violations']} |",
                flush=True,
            )
    largest = [row for row in rows if row["slots"] == max(r["slots"] for r in rows)]
    print(
        f"\n| goal: sweep host time <= {GOAL_US_PER_FORWARD:.0f} us per forward at 8M, cache covered within a stated "
        "number of forwards |"
    )
    print("|---|")
    for row in largest:
        print(
            f"| {row['slots']} slots, step nodes {row['step_nodes']}, sweep_interval {row['interval_for_goal']}: "
            f"{float(row['warm_mean_us']) / row['interval_for_goal']:.0f} us per forward amortised, "
            f"every slot cached for a round verified within {row['round_forwards_for_goal']} forwards |"
        )
    if args.json:
        args.json.write_text(json.dumps({"device": name, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
