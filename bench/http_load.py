"""Sustained load on the mock HTTP server: many concurrent clients for a bounded time, canary on vs off.

Each client loops until the deadline: a prompt cut from one of a few shared prefixes plus a random
suffix, a random number of new tokens; a share of the clients' requests give up after a short random
time (the connection closes: the server aborts the request). Every 200 answer is checked against the
token oracle. The server runs in this process (uvicorn on a free port, its engine on its own thread),
so a test can check the engine's bookkeeping once the load is over (tests/reliability/test_sustained_load.py).

    python -m bench.http_load [--clients 64] [--seconds 30] [--mode swa]

prints one row per canary setting: requests sent, answered, given up, errors, tokens/s, p50/p99
latency of answered requests, and the server process's resident memory at a quarter of the run
and at its end.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from kv_canary import CanaryConfig, CanaryMode, RealKvHashMode
from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.engine import Engine
from mock_models.server.app import create_app
from mock_models.server.engine_worker import EngineWorker

PREFIX_LEN = 48
ANSWER_TIMEOUT_S = 300.0


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LoadPlan:
    clients: int = 64
    seconds: float = 30.0
    mode: str = "swa"
    canary: bool = True
    # A pool a few dozen requests fill: the radix cache evicts shared prefixes while others run.
    max_total_tokens: int = 2048
    max_running_requests: int = 32
    give_up_share: float = 0.1  # requests whose client leaves after 0.05..1 s
    seed: int = 0


@dataclasses.dataclass(kw_only=True, slots=True)
class LoadFigures:
    sent: int = 0
    answered: int = 0
    given_up: int = 0
    errors: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # (status, body) of non-200s
    wrong: list[str] = dataclasses.field(default_factory=list)  # 200 answers that are not the oracle's
    tokens: int = 0
    latencies_s: list[float] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    rss_mib: list[float] = dataclasses.field(default_factory=list)  # sampled every second

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def latency_ms(self, quantile: float) -> float:
        if len(self.latencies_s) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies_s, n=100, method="inclusive")[round(quantile * 100) - 1] * 1e3


def build_engine(plan: LoadPlan) -> Engine:
    return Engine(
        EngineConfig(
            model_mode=ModelMode(plan.mode),
            swa_window=32,
            max_total_tokens=plan.max_total_tokens,
            max_running_requests=plan.max_running_requests,
            chunked_prefill_size=256,
        ),
        canary_config=CanaryConfig(
            mode=CanaryMode.LOG if plan.canary else CanaryMode.NONE,
            real_kv_hash=RealKvHashMode.PARTIAL,
            sweep_interval=8,
        ),
    )


@contextmanager
def serving(engine: Engine) -> Iterator[str]:
    """The mock server on a free local port, in this process; yields its URL, stops it on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(EngineWorker(engine)), log_config=None, access_log=False, backlog=1024)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="load-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the in-process mock server did not start within 60 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def run_clients(url: str, engine: Engine, plan: LoadPlan) -> LoadFigures:
    figures = LoadFigures()
    lock = threading.Lock()
    prefixes = [[random.Random(f"{plan.seed}/{n}").randrange(1, 1000) for _ in range(PREFIX_LEN)] for n in range(4)]
    started = time.monotonic()
    deadline = started + plan.seconds

    def client(index: int) -> None:
        rng = random.Random(f"{plan.seed}/client/{index}")
        with httpx.Client(base_url=url, timeout=ANSWER_TIMEOUT_S) as http:
            while time.monotonic() < deadline:
                prompt = rng.choice(prefixes)[: rng.randrange(8, PREFIX_LEN + 1)]
                prompt += [rng.randrange(1, 1000) for _ in range(rng.randrange(1, 40))]
                new_tokens = rng.randrange(1, 33)
                gives_up = rng.random() < plan.give_up_share
                body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": new_tokens}}
                sent = time.monotonic()
                try:
                    response = http.post(
                        "/generate", json=body, timeout=rng.uniform(0.05, 1.0) if gives_up else ANSWER_TIMEOUT_S
                    )
                except httpx.TimeoutException:
                    with lock:
                        figures.sent += 1
                        figures.given_up += 1
                    continue
                latency = time.monotonic() - sent
                output = response.json()["output_ids"] if response.status_code == 200 else []
                right = output == engine.oracle.continuation(prompt, new_tokens)
                with lock:
                    figures.sent += 1
                    if response.status_code != 200:
                        figures.errors.append((response.status_code, response.text[:300]))
                        continue
                    if not right:
                        figures.wrong.append(f"prompt {prompt[:6]}... ({len(prompt)} tokens): got {output[:6]}...")
                    figures.answered += 1
                    figures.tokens += len(output)
                    figures.latencies_s.append(latency)

    stop_sampling = threading.Event()

    def sample_memory() -> None:
        while not stop_sampling.wait(1.0):
            figures.rss_mib.append(resident_mib())

    sampler = threading.Thread(target=sample_memory, name="rss-sampler", daemon=True)
    sampler.start()
    threads = [threading.Thread(target=client, args=(index,), name=f"client-{index}") for index in range(plan.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    figures.seconds = time.monotonic() - started
    stop_sampling.set()
    sampler.join()
    return figures


def resident_mib() -> float:
    """This process's resident set (Linux /proc), in MiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS line in /proc/self/status: resident memory is read on Linux only")


def flush_when_idle(url: str, *, timeout_s: float = 60.0) -> None:
    """POST /flush_cache until the engine is idle (409 while aborted requests are still winding down)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=30) as http:
        while True:
            response = http.post("/flush_cache")
            if response.status_code == 200:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the engine did not go idle within {timeout_s:.0f} s: {response.text}")
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--mode", default="swa", choices=[mode.value for mode in ModelMode])
    args = parser.parse_args()
    print(
        "| canary | clients | s | sent | answered | given up | errors | wrong | tokens/s | p50 ms | p99 ms "
        "| RSS MiB at 1/4 | RSS MiB at end |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for canary in (True, False):
        plan = LoadPlan(clients=args.clients, seconds=args.seconds, mode=args.mode, canary=canary)
        engine = build_engine(plan)
        with serving(engine) as url:
            figures = run_clients(url, engine, plan)
            flush_when_idle(url)
        rss = figures.rss_mib or [float("nan")]
        print(
            f"| {'on' if canary else 'off'} | {plan.clients} | {figures.seconds:.0f} | {figures.sent} | "
            f"{figures.answered} | {figures.given_up} | {len(figures.errors)} | {len(figures.wrong)} | "
            f"{figures.tokens_per_s:.0f} | {figures.latency_ms(0.5):.0f} | {figures.latency_ms(0.99):.0f} | "
            f"{rss[len(rss) // 4]:.0f} | {rss[-1]:.0f} |"
        )


if __name__ == "__main__":
    main()
