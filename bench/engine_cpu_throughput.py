"""Tokens per second the mock engine serves on the CPU, per model mode, canary off and on.

A shared-prefix workload (every request starts with one of two system prompts) is submitted at
once and run to completion; "computed" counts prompt tokens the engine actually ran (cached
prefixes excluded) plus generated tokens. Single-threaded torch, as the server runs.

    python bench/engine_cpu_throughput.py [--requests 32] [--prompt-len 96] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import pathlib
import random
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from kv_canary import CanaryConfig, CanaryMode, RealKvHashMode
from mock_models.config import EngineConfig
from mock_models.engine.engine import Engine


def workload(requests: int, prompt_len: int, seed: int = 7) -> list[list[int]]:
    rng = random.Random(seed)
    system_prompts = [[rng.randrange(1024) for _ in range(prompt_len // 2)] for _ in range(2)]
    return [
        system_prompts[i % 2] + [rng.randrange(1024) for _ in range(prompt_len - prompt_len // 2)]
        for i in range(requests)
    ]


def run(mode: str, canary: CanaryMode, prompts: list[list[int]], max_new_tokens: int) -> dict[str, float]:
    config = EngineConfig(
        model_mode=mode, swa_window=64, max_total_tokens=8192, max_running_requests=32, chunked_prefill_size=512
    )
    engine = Engine(config, canary_config=CanaryConfig(mode=canary, real_kv_hash=RealKvHashMode.PARTIAL))
    engine.generate([prompts[0][:8]], 2)  # warm-up
    engine.flush_cache()
    start_forwards = engine.forward_count
    start = time.perf_counter()
    results = engine.generate(prompts, max_new_tokens)
    seconds = time.perf_counter() - start
    prefill = sum(r.prompt_tokens - r.cached_tokens for r in results)
    generated = sum(r.completion_tokens for r in results)
    return {
        "forwards": engine.forward_count - start_forwards,
        "seconds": seconds,
        "prefill": prefill,
        "generated": generated,
        "tokens_per_s": (prefill + generated) / seconds,
        "generated_per_s": generated / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=96)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompts = workload(args.requests, args.prompt_len)
    print(
        f"{args.requests} requests x ({args.prompt_len} prompt + {args.max_new_tokens} new tokens), "
        f"torch {torch.__version__}, 1 CPU thread"
    )
    header = (
        f"{'mode':<6} {'canary':<7} {'forwards':>8} {'seconds':>8} {'computed':>9} {'tokens/s':>9} {'generated/s':>12}"
    )
    print(header)
    print("-" * len(header))
    for mode in ("mha", "swa", "dsv4"):
        for canary in (CanaryMode.NONE, CanaryMode.LOG):
            row = run(mode, canary, prompts, args.max_new_tokens)
            print(
                f"{mode:<6} {canary.value:<7} {row['forwards']:>8} {row['seconds']:>8.2f} "
                f"{row['prefill'] + row['generated']:>9} {row['tokens_per_s']:>9.0f} {row['generated_per_s']:>12.0f}"
            )


if __name__ == "__main__":
    main()
