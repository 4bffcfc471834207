"""The mock engine's decode step on CUDA, canary off vs on.

Requests are admitted and prefilled first; then every step is a decode of the whole batch, and
each step is timed on the wall clock after a device synchronize (the engine itself syncs once a
step to read the sampled tokens). The mock engine is a small Python engine, so its step time is
mostly host work: the ratio shows what the canary adds to an engine step, not to a real model's.

    python -m bench.engine_decode_cuda [--json out.json] [--warm mha|swa]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import torch

from kv_canary import CanaryConfig, CanaryMode, RealKvHashMode
from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.engine import Engine

DECODE_STEPS = 40
MODES = ("mha", "swa")
SHAPES = ((8, 512), (32, 512))  # (batch, prompt tokens)


def decode_step_ms(mode: str, batch: int, prompt_len: int, canary: CanaryMode, steps: int = DECODE_STEPS) -> float:
    config = EngineConfig(
        model_mode=ModelMode(mode),
        device="cuda",
        max_total_tokens=batch * (prompt_len + DECODE_STEPS + 8) + 64,
        max_running_requests=batch,
        chunked_prefill_size=batch * prompt_len,
        swa_window=64,
        swa_max_total_tokens=batch * (2 * 64 + 16 + prompt_len) + 64 if mode != "mha" else None,
    )
    engine = Engine(
        config,
        canary_config=CanaryConfig(
            mode=canary, real_kv_hash=RealKvHashMode.PARTIAL, stats_interval=0, health_check_interval=0
        ),
    )
    for index in range(batch):
        engine.submit([(index * 7 + i) % 1000 for i in range(prompt_len)], steps + 5)
    while engine.num_waiting:
        engine.step()
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        started = time.perf_counter()
        engine.step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1000)
    if engine.canary is not None:
        engine.canary.flush()
        lines = [record.format() for record in engine.canary.violations]
        if lines:
            raise AssertionError(f"a clean decode reported {len(lines)} violations:\n" + "\n".join(lines[:8]))
    return statistics.median(times[min(5, steps - 1) :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=pathlib.Path)
    parser.add_argument("--warm", choices=MODES, help="only compile the kernel variants this mode's rows launch")
    args = parser.parse_args()
    if args.warm:
        for batch, prompt_len in SHAPES:
            decode_step_ms(args.warm, batch, prompt_len, CanaryMode.LOG, steps=2)
        return
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| mode | batch | prompt | step ms, canary off | step ms, canary on | on / off |")
    print("|---|---|---|---|---|---|")
    rows = []
    for mode in MODES:
        for batch, prompt_len in SHAPES:
            off = decode_step_ms(mode, batch, prompt_len, CanaryMode.NONE)
            on = decode_step_ms(mode, batch, prompt_len, CanaryMode.LOG)
            rows.append({"mode": mode, "batch": batch, "prompt_len": prompt_len, "off_ms": off, "on_ms": on})
            print(f"| {mode} | {batch} | {prompt_len} | {off:.2f} | {on:.2f} | {on / off:.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
