"""The canary's cost on the CPU engine: tokens per second with it off and on, per model mode, as ratios.

A shared-prefix workload (every request starts with one of two system prompts) is submitted at
once and run to completion by the mock engine (its torch kernels, single-threaded torch, as the
server runs); "computed" counts prompt tokens the engine actually ran (cached prefixes excluded)
plus generated tokens. Each setting runs ``--rounds`` times, alternating off and on, and the median
is kept: single runs on a shared machine move by tens of percent. `on` uses the default config
(real KV `partial`); `on, sweep` adds a radix sweep step every 4 forwards.

    python -m bench.engine_cpu_throughput [--requests 32] [--prompt-len 96] [--max-new-tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from kv_canary import CanaryConfig, CanaryMode, RealKvHashMode
from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.engine import Engine

SETTINGS = {
    "off": CanaryConfig(mode=CanaryMode.NONE),
    "on": CanaryConfig(mode=CanaryMode.LOG, real_kv_hash=RealKvHashMode.PARTIAL),
    "on, sweep": CanaryConfig(mode=CanaryMode.LOG, real_kv_hash=RealKvHashMode.PARTIAL, sweep_interval=4),
}


def workload(requests: int, prompt_len: int, seed: int = 7) -> list[list[int]]:
    rng = random.Random(seed)
    system_prompts = [[rng.randrange(1024) for _ in range(prompt_len // 2)] for _ in range(2)]
    return [
        system_prompts[i % 2] + [rng.randrange(1024) for _ in range(prompt_len - prompt_len // 2)]
        for i in range(requests)
    ]


def tokens_per_second(mode: str, canary: CanaryConfig, prompts: list[list[int]], max_new_tokens: int) -> float:
    config = EngineConfig(
        model_mode=ModelMode(mode),
        swa_window=64,
        max_total_tokens=8192,
        max_running_requests=32,
        chunked_prefill_size=512,
    )
    engine = Engine(config, canary_config=canary)
    engine.generate([prompts[0][:8]], 2)  # warm-up
    engine.flush_cache()
    started = time.perf_counter()
    results = engine.generate(prompts, max_new_tokens)
    seconds = time.perf_counter() - started
    computed = sum(r.prompt_tokens - r.cached_tokens + r.completion_tokens for r in results)
    if engine.canary is not None:
        engine.canary.flush()
        if engine.canary.violations:
            raise AssertionError(f"a clean run reported {len(engine.canary.violations)} violations")
    return computed / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=96)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompts = workload(args.requests, args.prompt_len)
    print(
        f"{args.requests} requests x ({args.prompt_len} prompt + {args.max_new_tokens} new tokens), "
        f"torch {torch.__version__}, 1 CPU thread, median of {args.rounds} rounds"
    )
    print("| mode | " + " | ".join(f"tokens/s, {name}" for name in SETTINGS) + " | on / off | on, sweep / off |")
    print("|---" * (len(SETTINGS) + 3) + "|")
    for mode in ("mha", "swa", "dsv4"):
        samples: dict[str, list[float]] = {name: [] for name in SETTINGS}
        for _ in range(args.rounds):
            for name, canary in SETTINGS.items():
                samples[name].append(tokens_per_second(mode, canary, prompts, args.max_new_tokens))
        rate = {name: statistics.median(values) for name, values in samples.items()}
        cells = " | ".join(f"{rate[name]:.0f}" for name in SETTINGS)
        print(
            f"| {mode} | {cells} | {rate['on'] / rate['off']:.2f} | {rate['on, sweep'] / rate['off']:.2f} |", flush=True
        )


if __name__ == "__main__":
    main()
