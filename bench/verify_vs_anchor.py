"""The verify launch alone: ours and SGLang 0.5.23's (the anchor) in the same run, on the anchor's axes.

One launch verifies one group and one K/V half (no real-KV hash, no token check) of ``bs x prefix``
entries at random slots of a 16M-slot pool. Ours is the HEAD verify launch of the per-forward kernel:
it reads each request's ``req_to_token`` row itself (no plan), over records made valid by our own
HEAD write launch, so it checks position and chain hash of every entry and finds nothing. The
anchor verifies a plan of the same slots, as its own driver configures it (``.anchor/``, built by
``../shared/anchor/make_anchor.sh``).

Bandwidth uses the anchor's convention, 32 bytes of plan and two 32-byte records per entry (96 B),
so the two GB/s columns are a ratio of entries per second; the percentage holds it against a
device-to-device copy in the same run. Eager is a launch from Python (the host's time); graph is a
CUDA-graph replay captured without the host's lengths, as an engine captures decode.

    python -m bench.verify_vs_anchor [--anchor-dir .anchor] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib

import torch
import triton

from bench.anchor_loader import load_anchor
from bench.fixtures import batch_rows, copy_bandwidth_gbps, random_rows
from bench.timing import time_eager_us, time_graph_us
from kv_canary import CanaryConfig
from kv_canary.buffer_group import CanaryBufferGroup, HalfBuffers
from kv_canary.device_state import CanaryDeviceState
from kv_canary.kernels.forward_launch import TritonForward
from kv_canary.kernels.group_layout import GroupLayout
from kv_canary.kernels.settings import KernelSettings
from kv_canary.launch_tags import KvHalf, PoolGroupKind

AXES = [(1, 128), (32, 1024), (256, 4096), (1024, 4096), (1024, 16000)]
POOL_SLOTS = 16 * 1024 * 1024
BYTES_PER_ENTRY = 32 + 2 * 32
GOAL_ENTRIES = 1 << 20  # the throughput goals are judged at 1M entries
GOAL_OVER_ANCHOR = 2.0
GOAL_OF_COPY = 0.85


class Ours:
    """One FULL group guarding one K/V half: the HEAD verify launch of ``bs`` requests over ``prefix`` tokens."""

    def __init__(self, batch: int, prefix: int, device: str) -> None:
        group = CanaryBufferGroup(
            kind=PoolGroupKind.FULL,
            num_slots=POOL_SLOTS,
            halves={KvHalf.K: HalfBuffers.allocate(num_slots=POOL_SLOTS, device=device, real_kv=None)},
        )
        self.state = CanaryDeviceState.allocate(ring_capacity=256, device=device)
        config = CanaryConfig(verify_tokens=False, verify_capacity=batch * prefix)
        self.forward = TritonForward(
            layout=GroupLayout.of((group,), placeholder=self.state.step),
            state=self.state,
            settings=KernelSettings.from_config(config),
        )
        self.req_to_token, tokens = random_rows(batch=batch, length=prefix + 1, pool_slots=POOL_SLOTS, device=device)
        self.forward.write_head(batch_rows(self.req_to_token, tokens, batch=batch, prefix=0, new=prefix, hints=True))
        self.eager_rows = batch_rows(self.req_to_token, tokens, batch=batch, prefix=prefix, new=1, hints=True)
        self.graph_rows = batch_rows(
            self.req_to_token, tokens, batch=batch, prefix=prefix, new=1, hints=False, decode_form=True
        )

    def slots(self) -> torch.Tensor:
        return self.req_to_token[1:, :-1].flatten().to(torch.int64)


def anchor_launcher(anchor, buffer: torch.Tensor, slots: torch.Tensor, n: int):
    device = buffer.device
    plan = anchor.verify.VerifyPlan.allocate(verify_capacity=n, device=device)
    plan.verify_slot_indices.copy_(slots)
    plan.verify_prev_slot_indices.copy_(torch.roll(slots, 1))
    plan.verify_expected_positions.zero_()
    plan.verify_expected_tokens.fill_(-1)
    plan.verify_num_valid.fill_(n)
    context = anchor.verify.VerifyOrWriteContext(
        canary_buf=buffer,
        kernel_kind=anchor.verify.CanaryLaunchTag.HEAD_K_FULL,
        violation_ring=torch.zeros(256, anchor.consts.VIOLATION_FIELDS, dtype=torch.int64, device=device),
        violation_write_index=torch.zeros(1, dtype=torch.int32, device=device),
        slot_run_counter=torch.zeros(1, dtype=torch.int64, device=device),
        kernel_run_counter=torch.zeros(1, dtype=torch.int64, device=device),
        real_kv_sources=(),
        real_kv_hash_mode=anchor.consts.RealKvHashMode.NONE,
        enable_chain_position_assert=torch.zeros(1, dtype=torch.int32, device=device),
    )

    def launch() -> None:
        anchor.verify.launch_canary_verify_kernel(context=context, plan=plan, check_verify_expected_token=False)

    return launch


def measure(batch: int, prefix: int, anchor, anchor_buffer: torch.Tensor | None, device: str) -> dict[str, float]:
    n = batch * prefix
    ours = Ours(batch, prefix, device)
    row: dict[str, float] = {
        "batch": batch,
        "prefix": prefix,
        "entries": n,
        "ours_eager_us": time_eager_us(lambda: ours.forward.verify_head(ours.eager_rows)),
        "ours_graph_us": time_graph_us(lambda: ours.forward.verify_head(ours.graph_rows)),
        "ours_violations": int(ours.state.ring.write_index),
    }
    row["ours_gbps"] = n * BYTES_PER_ENTRY / row["ours_graph_us"] / 1e3
    if anchor is not None and anchor_buffer is not None:
        launch = anchor_launcher(anchor, anchor_buffer, ours.slots(), n)
        row["anchor_eager_us"] = time_eager_us(launch)
        row["anchor_graph_us"] = time_graph_us(launch)
        row["anchor_gbps"] = n * BYTES_PER_ENTRY / row["anchor_graph_us"] / 1e3
        row["ours_over_anchor"] = row["anchor_graph_us"] / row["ours_graph_us"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchor-dir", type=pathlib.Path, default=pathlib.Path(".anchor"))
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    device = "cuda"
    anchor = load_anchor(args.anchor_dir)
    copy = copy_bandwidth_gbps(device)
    print(
        f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, anchor "
        f"{'SGLang 0.5.23' if anchor else 'absent (build .anchor/ with ../shared/anchor/make_anchor.sh)'}, "
        f"copy bandwidth {copy:.0f} GB/s"
    )
    anchor_buffer = (
        torch.zeros(POOL_SLOTS, anchor.verify.CANARY_SLOT_BYTES, dtype=torch.uint8, device=device) if anchor else None
    )
    print(
        "| entries (bs x prefix) | ours eager us | ours graph us | anchor eager us | anchor graph us | ours GB/s "
        "| of copy | anchor GB/s | ours / anchor | violations |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for batch, prefix in AXES:
        row = measure(batch, prefix, anchor, anchor_buffer, device)
        torch.cuda.empty_cache()
        rows.append(row)
        print(
            f"| {row['entries']} ({batch}x{prefix}) | {cell(row, 'ours_eager_us')} | {cell(row, 'ours_graph_us')} | "
            f"{cell(row, 'anchor_eager_us')} | {cell(row, 'anchor_graph_us')} | {cell(row, 'ours_gbps', '.0f')} | "
            f"{100 * row['ours_gbps'] / copy:.0f}% | {cell(row, 'anchor_gbps', '.0f')} | "
            f"{cell(row, 'ours_over_anchor', '.2f')}x | {row['ours_violations']} |",
            flush=True,
        )
    print_goals(rows, copy)
    if args.json:
        payload = {"device": torch.cuda.get_device_name(), "copy_gbps": copy, "rows": rows}
        args.json.write_text(json.dumps(payload, indent=2))


def cell(row: dict[str, float], key: str, fmt: str = ".1f") -> str:
    return format(row[key], fmt) if key in row else "-"


def print_goals(rows: list[dict[str, float]], copy: float) -> None:
    """Each goal of issue 16 with its figure from this run."""
    at_goal = next(row for row in rows if row["entries"] >= GOAL_ENTRIES)
    smallest = rows[0]
    print("\n| goal | figure | held |")
    print("|---|---|---|")
    entries = at_goal["entries"]
    fraction = at_goal["ours_gbps"] / copy
    print(f"| verify {entries} entries >= {GOAL_OF_COPY:.0%} of copy | {fraction:.0%} | {fraction >= GOAL_OF_COPY} |")
    if "ours_over_anchor" in at_goal:
        ratio = at_goal["ours_over_anchor"]
        print(
            f"| verify {entries} entries >= {GOAL_OVER_ANCHOR}x anchor | {ratio:.2f}x | {ratio >= GOAL_OVER_ANCHOR} |"
        )
        ours, theirs = smallest["ours_graph_us"], smallest["anchor_graph_us"]
        held = ours <= theirs
        print(f"| verify {smallest['entries']} entries, graph <= anchor | {ours:.1f} vs {theirs:.1f} us | {held} |")
    else:
        print("| verify vs anchor | no anchor in this run | - |")


if __name__ == "__main__":
    main()
