"""Radix sweep throughput for 1M and 8M cached slots, against the device's copy bandwidth.

A synthetic radix cache (chains of 64-token nodes under 1024 branches) is filled with valid
canary records; a sweep pass then verifies, for each K/V half, the HEAD records and the TAIL
records, the TAIL ones either alone (`real_kv=none`) or with the real-KV hash (`partial`: the
first 16 bytes of the slot's row in each of 4 layers). The device part (the verify kernels) is
timed with CUDA events; the host part (walking the tree and building the plan) with a wall
clock. Peak bandwidth is a device-to-device copy in the same run (bytes read + written).

Bytes counted are the bytes a pass must read, per slot and K/V half: HEAD 16 (plan: slot,
predecessor, position, token) + 32 (record); TAIL the same, plus 4 x 16 of real K/V with
`partial`. Those 16-byte pieces are gathered from rows far apart, so each costs a whole 32-byte
DRAM sector: the `partial` rows move about 1.5x the bytes they count.

    python bench/sweep_throughput.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.per_forward_cost import MHATokenToKVPool
from bench.timing import time_eager_us
from kv_canary import CanaryConfig, RealKvHashMode
from kv_canary.adapters import attach_canary_buffers
from kv_canary.launch_tags import Phase
from kv_canary.manager import CanaryManager
from kv_canary.plans import WritePlan
from kv_canary.sweep.radix_walker import walk_radix_cache
from kv_canary.sweep.sweep_orchestrator import SweepOrchestrator
from kv_canary.sweep.sweep_plan import build_sweep_plan

NODE_TOKENS = 64
BRANCHES = 1024
LAYERS = 4
ROW_ELEMENTS = 128  # bf16: 256-byte rows; the partial hash reads one 32-byte sector of a row whatever its size
PARTIAL_BYTES = 16


class Node:
    def __init__(self, key: list[int], value: torch.Tensor, parent: Node | None) -> None:
        self.key, self.value, self.parent = key, value, parent
        self.children: dict[int, Node] = {}
        self.lock_ref = 0


class RadixCache:
    def __init__(self) -> None:
        self.root_node = Node([], torch.zeros(0, dtype=torch.int64), None)


def synthetic_cache(slots: int, device: str) -> RadixCache:
    """``BRANCHES`` chains of ``NODE_TOKENS``-token nodes holding slots 1..slots."""
    cache = RadixCache()
    values = torch.arange(1, slots + 1, device=device).view(-1, NODE_TOKENS)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 128_000, (slots,), generator=generator).view(-1, NODE_TOKENS).tolist()
    chains = [cache.root_node] * BRANCHES
    for index in range(values.shape[0]):
        branch = index % BRANCHES
        parent = chains[branch]
        node = Node(tokens[index], values[index], parent)
        parent.children[tokens[index][0] + (branch << 20 if parent is cache.root_node else 0)] = node
        chains[branch] = node
    return cache


def copy_bandwidth_gbps(device: str) -> float:
    source = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    us = time_eager_us(lambda: target.copy_(source), iterations=20, warmup=3)
    return 2 * source.numel() / us / 1e3


def measure(slots: int, device: str) -> dict[str, float]:
    pool = MHATokenToKVPool(slots + 1, LAYERS, ROW_ELEMENTS, device)
    config = CanaryConfig(
        real_kv_hash=RealKvHashMode.PARTIAL,
        sweep_interval=1,
        stats_interval=0,
        health_check_interval=0,
        verify_capacity=1,
        write_capacity=1,
        max_requests_per_forward=1,
    )
    groups = attach_canary_buffers(pool, config=config, swa_window=None)
    manager = CanaryManager(
        config=config, groups=groups, device=torch.device(device), logger=logging.getLogger("bench")
    )
    manager.attach_prefix_cache(synthetic_cache(slots, device))
    (group,) = groups
    started = time.perf_counter()
    walk = walk_radix_cache(manager.prefix_cache, device=device)
    plan = build_sweep_plan(walk, group)
    torch.cuda.synchronize()
    host_seconds = time.perf_counter() - started
    _make_records_valid(manager, group, walk)

    def sweep_device_part(hash_real_kv: bool) -> None:
        for half, buffers in group.halves.items():
            for phase, real_kv in ((Phase.HEAD, None), (Phase.TAIL, buffers.real_kv if hash_real_kv else None)):
                manager.kernels.verify(
                    records=group.records(phase, half),
                    plan=plan,
                    launch_tag=group.launch_tag(Phase.SWEEP, half),
                    state=manager.state,
                    real_kv=real_kv,
                    check_tokens=True,
                    num_entries=walk.num_tokens,
                )

    results = {"slots": slots, "host_walk_s": host_seconds}
    for real_kv_mode in ("none", "partial"):
        device_us = time_eager_us(
            lambda: sweep_device_part(hash_real_kv=real_kv_mode == "partial"), iterations=10, warmup=2
        )
        per_slot_bytes = 2 * (2 * (16 + 32) + (LAYERS * PARTIAL_BYTES if real_kv_mode == "partial" else 0))
        results[real_kv_mode] = {
            "device_us": device_us,
            "slots_per_s": slots / device_us * 1e6,
            "gbps": slots * per_slot_bytes / device_us / 1e3,
        }
    orchestrator = SweepOrchestrator(manager=manager)
    started = time.perf_counter()
    orchestrator.run_pass()
    torch.cuda.synchronize()
    full_pass_seconds = time.perf_counter() - started
    results.update(full_pass_s=full_pass_seconds, violations=int(manager.state.ring.write_index))
    return results


def _make_records_valid(manager: CanaryManager, group, walk) -> None:
    """Write every cached slot's HEAD and TAIL records as the engine would have, node by node."""
    n = walk.num_tokens
    starts = torch.nonzero(walk.positions % NODE_TOKENS == 0).flatten()  # every node starts a chain run
    plan = WritePlan.allocate(capacity=n, request_capacity=starts.numel(), device=walk.slots.device)
    for name, values in (
        ("slot_indices", walk.slots),
        ("tokens", walk.tokens),
        ("positions", walk.positions),
        ("expected_positions", walk.positions),
        ("expected_tokens", walk.tokens),
    ):
        getattr(plan, name).copy_(values)
    plan.entry_counts.fill_(NODE_TOKENS)
    # A node chains from its parent's last record, so parents are written first: one launch per depth.
    depth_of_start = walk.positions[starts] // NODE_TOKENS
    for depth in range(int(depth_of_start.max()) + 1):
        level = depth_of_start == depth
        count = int(level.sum())
        plan.entry_starts[:count] = starts[level]
        plan.pred_slots[:count] = walk.prev_slots[starts[level]]
        plan.num_requests.fill_(count)
        for half, buffers in group.halves.items():
            for phase, real_kv in ((Phase.HEAD, None), (Phase.TAIL, buffers.real_kv)):
                manager.kernels.write(
                    records=group.records(phase, half),
                    plan=plan,
                    launch_tag=group.launch_tag(phase, half),
                    state=manager.state,
                    real_kv=real_kv,
                    assert_inputs=True,
                    max_entries_per_request=NODE_TOKENS,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    device = "cuda"
    peak = copy_bandwidth_gbps(device)
    print(f"device {torch.cuda.get_device_name()}, copy bandwidth {peak:.0f} GB/s (read + write)")
    print(
        "| cached slots | real KV | device us / pass | slots/s | GB/s | % of copy bandwidth | host walk + plan s "
        "| whole pass s | violations |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for slots in (1 << 20, 8 << 20):
        row = measure(slots, device)
        rows.append(row)
        for mode in ("none", "partial"):
            part = row[mode]
            part["fraction_of_peak"] = part["gbps"] / peak
            print(
                f"| {slots} | {mode} | {part['device_us']:.0f} | {part['slots_per_s'] / 1e9:.2f} G | "
                f"{part['gbps']:.0f} | {100 * part['fraction_of_peak']:.0f}% | {row['host_walk_s']:.2f} | "
                f"{row['full_pass_s']:.2f} | {row['violations']} |",
                flush=True,
            )
    if args.json:
        args.json.write_text(
            json.dumps({"device": torch.cuda.get_device_name(), "copy_gbps": peak, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
