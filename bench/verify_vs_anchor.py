"""The verify kernel alone: ours and SGLang 0.5.23's (the anchor) in the same run, on the anchor's axes.

One launch = one group and one K/V half, no real-KV hash, random slots in a 16M-slot pool.
Our records are made valid first (by our write kernel), so ours checks position and chain hash
of every entry and finds nothing; the anchor runs as its own driver configures it. Effective
bandwidth counts, per entry, 32 bytes of plan and two 32-byte records (the slot's and its
predecessor's), the anchor's convention, so the ratio is a ratio of entries per second.

    python bench/verify_vs_anchor.py [--anchor-dir .anchor] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.anchor_loader import load_anchor
from bench.timing import time_eager_us, time_graph_us
from kv_canary.device_state import CanaryDeviceState
from kv_canary.kernels import verify_reference, verify_triton, write_triton
from kv_canary.launch_tags import LaunchTag
from kv_canary.plans import VerifyPlan, WritePlan

AXES = [(1, 128), (32, 1024), (256, 4096), (1024, 4096), (1024, 16000)]
POOL_SLOTS = 16 * 1024 * 1024
BYTES_PER_ENTRY = 32 + 2 * 32
TORCH_REFERENCE_MAX_ENTRIES = 1 << 20


def chained_plans(
    records: torch.Tensor, slots: torch.Tensor, batch: int, prefix: int, state: CanaryDeviceState
) -> VerifyPlan:
    """Write valid records for ``batch`` sequences of ``prefix`` tokens, return the plan verifying them."""
    n = slots.shape[0]
    device = records.device
    positions = (torch.arange(n, device=device) % prefix).to(torch.int32)
    write = WritePlan.allocate(capacity=n, request_capacity=batch, device=device)
    write.entry_starts.copy_(torch.arange(batch, device=device) * prefix)
    write.entry_counts.fill_(prefix)
    write.num_requests.fill_(batch)
    write.slot_indices.copy_(slots)
    write.tokens.copy_(torch.randint(0, 128_000, (n,), device=device, dtype=torch.int32))
    write.positions.copy_(positions)
    write.expected_positions.copy_(positions)
    write_triton.write_canaries(
        records=records,
        plan=write,
        launch_tag=LaunchTag.HEAD_K_FULL,
        state=state,
        real_kv=None,
        assert_inputs=True,
        num_entries=n,
        max_entries_per_request=prefix,
    )
    verify = VerifyPlan.allocate(n, device)
    verify.slot_indices.copy_(slots)
    verify.prev_slot_indices.copy_(torch.where(positions == 0, 0, torch.roll(slots, 1)))
    verify.expected_positions.copy_(positions)
    verify.num_valid.fill_(n)
    return verify


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

    return launch, context.violation_write_index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchor-dir", type=pathlib.Path, default=pathlib.Path(".anchor"))
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    device = torch.device("cuda")
    anchor = load_anchor(args.anchor_dir)
    print(
        f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
        f"{__import__('triton').__version__}, anchor {'SGLang 0.5.23' if anchor else 'absent'}"
    )
    records = torch.zeros(POOL_SLOTS, 4, dtype=torch.int64, device=device)
    anchor_buffer = (
        torch.zeros(POOL_SLOTS, anchor.verify.CANARY_SLOT_BYTES, dtype=torch.uint8, device=device) if anchor else None
    )
    rows = []
    print(
        "| entries (bs x prefix) | ours eager us | ours graph us | anchor eager us | anchor graph us "
        "| ours GB/s | anchor GB/s | ours / anchor throughput | torch ref eager us | violations ours/anchor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for batch, prefix in AXES:
        n = batch * prefix
        slots = (torch.randperm(POOL_SLOTS - 1, device=device)[:n] + 1).to(torch.int32)
        state = CanaryDeviceState.allocate(ring_capacity=256, device=device)
        plan = chained_plans(records, slots, batch, prefix, state)

        def ours() -> None:
            verify_triton.verify_canaries(
                records=records,
                plan=plan,
                launch_tag=LaunchTag.HEAD_K_FULL,
                state=state,
                real_kv=None,
                check_tokens=False,
                num_entries=n,
            )

        row = {
            "batch": batch,
            "prefix": prefix,
            "entries": n,
            "ours_eager_us": time_eager_us(ours),
            "ours_graph_us": time_graph_us(ours),
        }
        row["ours_violations"] = int(state.ring.write_index)
        row["ours_gbps"] = n * BYTES_PER_ENTRY / row["ours_graph_us"] / 1e3
        if n <= TORCH_REFERENCE_MAX_ENTRIES:
            reference_state = CanaryDeviceState.allocate(ring_capacity=256, device=device)
            row["torch_reference_eager_us"] = time_eager_us(
                lambda: verify_reference.verify_canaries(
                    records=records,
                    plan=plan,
                    launch_tag=LaunchTag.HEAD_K_FULL,
                    state=reference_state,
                    real_kv=None,
                    check_tokens=False,
                    num_entries=n,
                ),
                iterations=10,
                warmup=2,
            )
        if anchor:
            launch, anchor_violations = anchor_launcher(anchor, anchor_buffer, slots.to(torch.int64), n)
            row["anchor_eager_us"] = time_eager_us(launch)
            row["anchor_graph_us"] = time_graph_us(launch)
            row["anchor_gbps"] = n * BYTES_PER_ENTRY / row["anchor_graph_us"] / 1e3
            row["ours_over_anchor_throughput"] = row["anchor_graph_us"] / row["ours_graph_us"]
            row["anchor_violations"] = int(anchor_violations)
        rows.append(row)

        def cell(key: str, fmt: str = ".1f") -> str:
            return format(row[key], fmt) if key in row else "-"

        print(
            f"| {n} ({batch}x{prefix}) | {cell('ours_eager_us')} | {cell('ours_graph_us')} | "
            f"{cell('anchor_eager_us')} | {cell('anchor_graph_us')} | {cell('ours_gbps', '.0f')} | "
            f"{cell('anchor_gbps', '.0f')} | {cell('ours_over_anchor_throughput', '.2f')}x | "
            f"{cell('torch_reference_eager_us')} | {row['ours_violations']}/{row.get('anchor_violations', '-')} |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
