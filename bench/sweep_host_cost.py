"""The sweep's host time per forward against cache size: 1K to 8M cached slots, a round spread over steps.

A step (every `sweep_interval` forwards) lists the next nodes of the round (at most
`sweep_step_nodes`) and launches their verify; the host time of a step is its wall time on the
calling thread, the launch being asynchronous. A round covers the cache once; `steps / round`
times the interval is the bound within which every slot cached throughout a round is verified.
The first round converts every node's token ids (once per node); later rounds reuse them.

The cache is synthetic (64-token nodes in chains under up to 1024 branches, as bench.sweep_throughput).
Amortised host time per forward is a step's mean over `sweep_interval`: the table gives it for an
interval of 1 and says which interval keeps it within the goal.

    python -m bench.sweep_host_cost [--json out.json] [--step-nodes 32 128] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import time
from typing import Any

import torch

from bench.sweep_fixture import NODE_TOKENS, swept_cache
from kv_canary import RealKvHashMode
from kv_canary.sweep.sweep_orchestrator import SweepOrchestrator

SIZES = (1 << 10, 1 << 13, 1 << 16, 1 << 19, 1 << 20, 1 << 23)
GOAL_US_PER_FORWARD = 50.0  # at 8M cached slots


def round_step_times(orchestrator: SweepOrchestrator, device: str) -> list[float]:
    """Host microseconds of each step of one round."""
    times = []
    passes = orchestrator.passes
    while orchestrator.passes == passes:
        started = time.perf_counter()
        orchestrator.run_step()
        times.append((time.perf_counter() - started) * 1e6)
    if device == "cuda":
        torch.cuda.synchronize()
    return times


def measure(slots: int, step_nodes: int, device: str) -> dict[str, Any]:
    swept = swept_cache(slots, RealKvHashMode.NONE, device, step_nodes=step_nodes, step_tokens=1 << 40)
    orchestrator = SweepOrchestrator(manager=swept.manager)
    cold = round_step_times(orchestrator, device)
    warm = round_step_times(orchestrator, device)
    return {
        "slots": slots,
        "nodes": swept.nodes,
        "step_nodes": step_nodes,
        "steps_per_round": len(warm),
        "cold_mean_us": statistics.mean(cold),
        "warm_mean_us": statistics.mean(warm),
        "warm_p99_us": sorted(warm)[min(len(warm) - 1, math.ceil(0.99 * len(warm)) - 1)],
        "warm_max_us": max(warm),
        "violations": int(swept.manager.state.ring.write_index),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=pathlib.Path)
    parser.add_argument("--step-nodes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-slots", type=int, default=SIZES[-1])
    args = parser.parse_args()
    device = args.device
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (torch kernels: their device work is host time)"
    print(f"device {name}, {NODE_TOKENS}-token nodes; host us per step = per forward at sweep_interval 1")
    print(
        "| cached slots | nodes | step nodes | steps / round | host us / step, 1st round | host us / step "
        "| p99 | max | interval for <= 50 us/forward | round in forwards then | violations |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for step_nodes in args.step_nodes:
        for slots in (size for size in SIZES if size <= args.max_slots):
            row = measure(slots, step_nodes, device)
            interval = max(1, math.ceil(float(row["warm_mean_us"]) / GOAL_US_PER_FORWARD))
            row["interval_for_goal"] = interval
            row["round_forwards_for_goal"] = interval * int(row["steps_per_round"])
            rows.append(row)
            print(
                f"| {slots} | {row['nodes']} | {step_nodes} | {row['steps_per_round']} | {row['cold_mean_us']:.0f} | "
                f"{row['warm_mean_us']:.0f} | {row['warm_p99_us']:.0f} | {row['warm_max_us']:.0f} | {interval} | "
                f"{row['round_forwards_for_goal']} | {row['violations']} |",
                flush=True,
            )
    largest = [row for row in rows if row["slots"] == max(r["slots"] for r in rows)]
    print("\n| goal: sweep host time <= 50 us per forward at 8M, cache covered within a stated number of forwards |")
    print("|---|")
    for row in largest:
        print(
            f"| step nodes {row['step_nodes']}, sweep_interval {row['interval_for_goal']}: "
            f"{float(row['warm_mean_us']) / row['interval_for_goal']:.0f} us per forward amortised, "
            f"every slot cached for a round verified within {row['round_forwards_for_goal']} forwards |"
        )
    if args.json:
        args.json.write_text(json.dumps({"device": name, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
