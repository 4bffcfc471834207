"""The whole canary per forward: its three launches (HEAD write, HEAD verify, TAIL) for every group and K/V half.

Decode batches of 1/32/256/1024 requests over prefixes of 0/1k/4k/16k tokens and extend batches
of 512 and 4096 new tokens, in `mha` and `swa` layouts, with real-KV hashing none/partial/all,
eager (the host's lengths given, as SGLang runs prefill) and under CUDA-graph replay (captured
without them, a decode batch given by its seq_lens, as SGLang captures decode). The model is not
run: the figures are the canary's alone. Real-KV hashing reads 4 layers of Llama-8B-shaped rows
(8 KV heads x 128 x bf16); without it the rows are 16 bytes, so 16M-slot pools stay small.
`partial+lw` adds the lost-write check (each new slot's rows marked before the model, looked at
after it): with no model to overwrite the marks, every new slot is reported as a lost write, so
its violations column counts them (and its figures include their ring rows), as the check should.
The host-side observers (drain, stats) are measured apart, once.

    python -m bench.per_forward_cost [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time
from typing import Any

import torch
import triton

from bench.fixtures import MHATokenToKVPool, SWAKVPool, batch_rows, manager_for, random_rows
from bench.timing import time_eager_us, time_graph_us
from kv_canary import CanaryConfig, KernelBackend, RealKvHashMode
from kv_canary.forward_rows import ForwardRows
from kv_canary.kernels import forward_launch
from kv_canary.manager import CanaryManager
from kv_canary.observers.defaults import build_default_observers

SWA_WINDOW = 1024
REAL_KV_LAYERS = 4
MAX_SLOTS_WITH_REAL_KV = 1 << 21
GOAL_GRAPH_US = {"mha": 8.0, "swa": 12.0}  # decode bs=1, real KV none
GOAL_EAGER_US = 100.0  # any decode bs 1..32
MODES = ("mha", "swa")
REAL_KV = ("none", "partial", "partial+lw", "all")


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


QUICK_DECODE = ((1, 0), (1, 1024), (1, 4096), (32, 0), (32, 1024), (32, 4096), (256, 4096), (1024, 1024))
QUICK_ALL = {"decode bs=32 prefix=1024 new=32", "extend bs=4 prefix=1024 new=512"}  # `all` hashes every byte
QUICK_LOST_WRITES = {"decode bs=1 prefix=0 new=1", "decode bs=32 prefix=1024 new=32"}


def cases(quick: bool) -> list[Case]:
    extend = [
        Case(kind="extend", batch=4, prefix=1024, new_tokens=128),
        Case(kind="extend", batch=4, prefix=1024, new_tokens=1024),
    ]
    if quick:
        return [Case(kind="decode", batch=b, prefix=p, new_tokens=1) for b, p in QUICK_DECODE] + extend
    decode = [
        Case(kind="decode", batch=b, prefix=p, new_tokens=1) for b in (1, 32, 256, 1024) for p in (0, 1024, 4096, 16384)
    ]
    return decode + extend


def settings(quick: bool) -> list[tuple[Case, str, str]]:
    """(case, mode, real KV) of every measurement, the goals' first: a run cut short still has them.

    Real-KV settings come after every `none` one (each of their variants takes far longer to compile)."""
    chosen = []
    for real_kv in REAL_KV:
        for case in cases(quick):
            for mode in MODES:
                if real_kv != "none" and case.slots > MAX_SLOTS_WITH_REAL_KV:
                    continue
                if quick and real_kv == "all" and case.label not in QUICK_ALL:
                    continue
                if quick and real_kv == "partial+lw" and case.label not in QUICK_LOST_WRITES:
                    continue
                chosen.append((case, mode, real_kv))
    return sorted(chosen, key=lambda setting: not _judges_a_goal(*setting))


def _judges_a_goal(case: Case, mode: str, real_kv: str) -> bool:
    if case.kind != "decode":
        return False
    return (case.batch == 1 and real_kv == "none") or (case.batch <= 32 and real_kv in ("none", "partial"))


def compile_key(case: Case, mode: str, real_kv: str) -> tuple[object, ...]:
    """What decides the kernel variants a setting compiles (``kernels/forward_launch.py``): the layout,
    the real-KV setting, the verify shape (from the entries read) and whether a run outgrows the short
    write block. Settings of one key compile the same variants, so a warm-up compiles each key once."""
    entries = max(case.batch * case.prefix, 1)
    shape = next(shape for shape in forward_launch._VERIFY_SHAPES if entries <= shape[0])
    return (mode, real_kv, shape, case.new_tokens > forward_launch._SHORT_RUN_WRITE_BLOCK)


def build(
    case: Case, mode: str, real_kv: str, device: str, *, verify_capacity: int | None = None
) -> tuple[CanaryManager, ForwardRows, ForwardRows]:
    """A canary over a pool whose records the case's prefix has written, and its eager and captured rows.

    ``verify_capacity`` (default: the case's verify entries) sizes the captured launch."""
    hash_mode = RealKvHashMode(real_kv.split("+", maxsplit=1)[0])
    hashed = hash_mode is not RealKvHashMode.NONE
    layers, row = (REAL_KV_LAYERS, 8 * 128) if hashed else (1, 8)
    swa_pool = None
    if mode == "mha":
        pool: MHATokenToKVPool | SWAKVPool = MHATokenToKVPool(case.slots, layers, row, device)
    else:
        swa_slots = case.batch * (min(case.prefix, SWA_WINDOW) + case.new_tokens) + 1
        pool = swa_pool = SWAKVPool(case.slots, swa_slots, layers, row, device)
    config = CanaryConfig(
        backend=KernelBackend.AUTO,
        real_kv_hash=hash_mode,
        check_lost_writes=real_kv.endswith("+lw"),
        stats_interval=0,
        health_check_interval=0,
        verify_capacity=verify_capacity or max(case.batch * case.prefix, 1),
    )
    manager = manager_for(pool, config, swa_window=SWA_WINDOW, device=device)
    length = case.prefix + case.new_tokens
    req_to_token, tokens = random_rows(batch=case.batch, length=length, pool_slots=case.slots, device=device)
    if swa_pool is not None:
        in_window = torch.arange(length, device=device) >= case.prefix - SWA_WINDOW
        resident = req_to_token[1:, in_window].flatten().to(torch.int64)
        swa_pool.full_to_swa_index_mapping[resident] = torch.arange(1, resident.numel() + 1, device=device)
    if case.prefix:  # the prefix's records, written once
        manager.before_forward(
            batch_rows(req_to_token, tokens, batch=case.batch, prefix=0, new=case.prefix, hints=True)
        )
        manager.after_forward()
    batch, prefix, new = case.batch, case.prefix, case.new_tokens
    eager = batch_rows(req_to_token, tokens, batch=batch, prefix=prefix, new=new, hints=True)
    captured = batch_rows(req_to_token, tokens, batch=batch, prefix=prefix, new=new, hints=False, decode_form=True)
    return manager, eager, captured


def measure(case: Case, mode: str, real_kv: str, device: str) -> dict[str, Any]:
    manager, eager_rows, graph_rows = build(case, mode, real_kv, device)

    def forward(rows: ForwardRows) -> None:
        manager.before_forward(rows)
        manager.after_forward()

    # The same step is repeated: its writes rewrite identical records, so it stays clean (but for the
    # lost-write check, which sees every new slot unwritten: no model runs here).
    eager_us = time_eager_us(lambda: forward(eager_rows), iterations=20, warmup=10)
    graph_us = time_graph_us(lambda: forward(graph_rows), launches_per_graph=1, replays=20)
    return {
        "case": case.label,
        "kind": case.kind,
        "batch": case.batch,
        "prefix": case.prefix,
        "mode": mode,
        "real_kv": real_kv,
        "eager_us": eager_us,
        "graph_us": graph_us,
        "violations": int(manager.state.ring.write_index),
    }


def warm(quick: bool, shard: int, shards: int, device: str) -> None:
    """Compile this shard's share of the kernel variants the measurements launch, into Triton's cache.

    A variant depends on the launch shape, not on the sizes: a one-request copy of each case whose
    captured launch is sized for the case's entries compiles what the case will, in little memory.
    One setting per compile key, the slowest to compile (real-KV hashing, two groups) dealt first."""
    first_of_key: dict[tuple[object, ...], tuple[Case, str, str]] = {}
    for setting in settings(quick):
        first_of_key.setdefault(compile_key(*setting), setting)
    by_cost = sorted(first_of_key.values(), key=lambda setting: (setting[2] == "none", setting[1] != "swa"))
    for index, (case, mode, real_kv) in enumerate(by_cost):
        if index % shards != shard:
            continue
        small = Case(kind=case.kind, batch=1, prefix=min(case.prefix, 8), new_tokens=case.new_tokens)
        manager, eager_rows, graph_rows = build(
            small, mode, real_kv, device, verify_capacity=max(case.batch * case.prefix, 1)
        )
        for rows in (graph_rows, eager_rows):
            manager.before_forward(rows)
            manager.after_forward()
    torch.cuda.synchronize()


def host_observer_us(device: str) -> float:
    """Host time of the observers an install runs after each forward (drain, stats), eager, bs=32 decode."""
    case = Case(kind="decode", batch=32, prefix=1024, new_tokens=1)
    manager, rows, _ = build(case, "mha", "none", device)
    manager.observers.extend(build_default_observers(manager))
    for _ in range(20):
        manager.before_forward(rows)
        manager.after_forward()
        manager.after_forward_on_host()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(100):
        manager.after_forward_on_host()
    return (time.perf_counter() - started) / 100 * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=pathlib.Path)
    parser.add_argument("--quick", action="store_true", help="fewer cases: the goals' and a few around them")
    parser.add_argument("--warm", metavar="SHARD/SHARDS", help="only compile this shard's kernel variants")
    parser.add_argument("--count-keys", action="store_true", help="print how many compile keys the run has")
    args = parser.parse_args()
    device = "cuda"
    if args.count_keys:
        print(len({compile_key(*setting) for setting in settings(args.quick)}), "compile keys")
        return
    if args.warm:
        shard, shards = (int(part) for part in args.warm.split("/"))
        warm(args.quick, shard, shards, device)
        return
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    print("| case | mode | real KV | eager us | graph us | violations |")
    print("|---|---|---|---|---|---|")
    results = []
    for case, mode, real_kv in settings(args.quick):
        row = measure(case, mode, real_kv, device)
        results.append(row)
        print(
            f"| {case.label} | {mode} | {real_kv} | {row['eager_us']:.1f} | {row['graph_us']:.1f} | "
            f"{row['violations']} |",
            flush=True,
        )
        torch.cuda.empty_cache()
    host_us = host_observer_us(device)
    print(f"\nhost-side observers per forward (drain + stats, eager, bs=32): {host_us:.1f} us")
    print_goals(results)
    if args.json:
        payload = {"device": torch.cuda.get_device_name(), "host_observer_us": host_us, "rows": results}
        args.json.write_text(json.dumps(payload, indent=2))


def print_goals(results: list[dict[str, Any]]) -> None:
    """Each per-forward goal of issue 16 with the figures of this run that it judges."""
    print("\n| goal | figures | worst / goal | held |")
    print("|---|---|---|---|")
    for mode, goal in GOAL_GRAPH_US.items():
        rows = [
            r
            for r in results
            if r["kind"] == "decode" and r["batch"] == 1 and r["mode"] == mode and r["real_kv"] == "none"
        ]
        worst = max(float(r["graph_us"]) for r in rows)
        figures = ", ".join(f"prefix {r['prefix']}: {float(r['graph_us']):.1f}" for r in rows)
        print(
            f"| graph, decode bs=1, {mode}, none <= {goal:.0f} us | {figures} | {worst / goal:.2f} | {worst <= goal} |"
        )
    rows = [
        r for r in results if r["kind"] == "decode" and int(r["batch"]) <= 32 and r["real_kv"] in ("none", "partial")
    ]
    worst_row = max(rows, key=lambda r: float(r["eager_us"]))
    worst = float(worst_row["eager_us"])
    print(
        f"| eager, decode bs 1..32 (none, partial) <= {GOAL_EAGER_US:.0f} us | worst {worst:.1f} "
        f"({worst_row['case']}, {worst_row['mode']}, {worst_row['real_kv']}) | {worst / GOAL_EAGER_US:.2f} | "
        f"{worst <= GOAL_EAGER_US} |"
    )


if __name__ == "__main__":
    main()
