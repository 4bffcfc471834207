"""Timing jitter: the same contexts, replayed through the HTTP server with seeded random delays between
scheduling, the forward, K/V writes and frees, and in the HTTP layer (``mock_models/engine/jitter.py``),
on a pool small enough that the radix cache evicts while requests run and, with ``new_token_ratio``
0, decodes that run out of pages retract other requests.

Clean: no violation, and every answer is the token oracle's continuation with the attention checksum
of a run without jitter (what the model read from the KV cache is the same whatever the timing). With
a fault: detected within the library's bound of the forward it was applied before.
"""

from __future__ import annotations

import concurrent.futures
import random
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from kv_canary import CanaryConfig, CanaryMode, RealKvHashMode, ViolationRecord
from kv_canary_contract.token_oracle import TokenOracle
from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.engine import Engine
from mock_models.faults import FaultInjector
from mock_models.server.app import create_app
from mock_models.server.engine_worker import EngineWorker
from mock_models.server.fault_routes import build_fault_router

CLIENTS = 8
JITTER_US = 300
# 24 requests of up to 103 tokens on three shared prefixes against 192 slots: the radix cache evicts
# finished prefixes while others run, admission waits for room, and decodes retract requests.
POOL_TOKENS = 192
PREFIXES = [[random.Random(seed).randrange(1, 1000) for _ in range(24)] for seed in range(3)]


def contexts(seed: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [
        (
            rng.choice(PREFIXES)[: rng.randrange(8, 25)]
            + [rng.randrange(1, 1000) for _ in range(rng.randrange(1, 40))],
            rng.randrange(8, 41),
        )
        for _ in range(24)
    ]


def serve(mode: str, *, jitter_us: int, seed: int, with_faults: bool = False) -> TestClient:
    engine = Engine(
        EngineConfig(
            model_mode=ModelMode(mode),
            swa_window=16,
            max_total_tokens=POOL_TOKENS,
            max_running_requests=6,
            chunked_prefill_size=32,
            jitter_max_us=jitter_us,
            jitter_seed=seed,
            # Admission reserves no decode pages: requests outgrow the pool and decodes retract others.
            new_token_ratio=0.0,
        ),
        canary_config=CanaryConfig(
            mode=CanaryMode.LOG, real_kv_hash=RealKvHashMode.ALL, check_lost_writes=True, sweep_interval=3
        ),
    )
    routers = [build_fault_router(FaultInjector.install(engine))] if with_faults else []
    return TestClient(create_app(EngineWorker(engine), extra_routers=routers))


def replay(client: TestClient, work: list[tuple[list[int], int]]) -> list[dict]:
    def generate(item: tuple[list[int], int]) -> dict:
        prompt, max_new_tokens = item
        response = client.post(
            "/generate", json={"input_ids": prompt, "sampling_params": {"max_new_tokens": max_new_tokens}}
        )
        assert response.status_code == 200, response.text
        return response.json()

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(generate, work))


def violations(client: TestClient) -> list[ViolationRecord]:
    body = client.get("/kv_canary/violations").json()
    parsed = [ViolationRecord.parse(line) for line in body["lines"]]
    records = [record for record in parsed if record is not None]
    assert body["count"] == len(parsed) == len(records), body
    return records


# mha by default (where decodes retract: in the SWA modes admission waits for SWA slots first);
# -m slow adds swa and dsv4, and the other fault kinds.
@pytest.fixture(
    scope="module",
    params=["mha", pytest.param("swa", marks=pytest.mark.slow), pytest.param("dsv4", marks=pytest.mark.slow)],
)
def unjittered(request) -> Iterator[tuple[str, dict[tuple[int, ...], float]]]:
    """Each context's attention checksum, run one at a time without jitter."""
    mode = request.param
    with serve(mode, jitter_us=0, seed=0) as client:
        work = contexts(0) + contexts(1)
        checksums = {}
        for prompt, max_new_tokens in work:
            body = replay(client, [(prompt, max_new_tokens)])[0]
            checksums[tuple(prompt)] = body["meta_info"]["attention_checksum"]
        assert violations(client) == []
    yield mode, checksums


@pytest.mark.parametrize("seed", [0, 1])
def test_jittered_replays_stay_clean_and_read_what_an_unjittered_run_reads(unjittered, seed):
    mode, checksums = unjittered
    oracle = TokenOracle(seed=0, vocab_size=EngineConfig().vocab_size)
    retractions = []
    with serve(mode, jitter_us=JITTER_US, seed=seed) as client:
        client.app.state.worker.engine.add_batch_hook(lambda _engine, batch: retractions.extend(batch.retracted))
        work = contexts(seed)
        answers = replay(client, work)
        info = client.get("/get_server_info").json()
        found = violations(client)
        engine = client.app.state.worker.engine
        assert engine.jitter.pauses > 0
    assert found == []
    for (prompt, max_new_tokens), body in zip(work, answers, strict=True):
        assert body["output_ids"] == oracle.continuation(prompt, max_new_tokens)
        assert body["meta_info"]["attention_checksum"] == pytest.approx(checksums[tuple(prompt)], rel=1e-5)
    assert info["forward_count"] > 0
    assert retractions or mode != "mha", "no decode retracted a request: the pool is not tight"


@pytest.mark.parametrize(
    ("kind", "bound"),
    [
        ("lost_write", 4),
        ("misdirected_write", 4),
        pytest.param("corrupt_kv_bytes", 4, marks=pytest.mark.slow),
        pytest.param("swap_next_token", 4, marks=pytest.mark.slow),
        pytest.param("double_free", 4, marks=pytest.mark.slow),
    ],
)
def test_under_jitter_a_fault_is_still_caught_within_its_bound(kind, bound):
    with serve("swa", jitter_us=JITTER_US, seed=7, with_faults=True) as client:
        assert client.post("/kv_canary/inject", json={"kind": kind, "at_step": 12}).status_code == 200
        replay(client, contexts(2))
        (entry,) = client.get("/kv_canary/injections").json()["injections"]
        found = violations(client)
    assert entry["status"] == "applied", entry
    assert found, f"{kind} applied before forward {entry['step']} under jitter, and no violation"
    first = min(record.step for record in found)
    assert entry["step"] <= first <= entry["step"] + bound, (entry, found[:3])
