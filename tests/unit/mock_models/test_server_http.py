"""The HTTP server: in-process through TestClient, and as a real process on a free port."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from fastapi import APIRouter, Request
from fastapi.testclient import TestClient

from harness.runner.engine_client import EngineClient
from kv_canary import CanaryConfig, CanaryMode, RealKvHashMode, ViolationRecord
from kv_canary_contract.token_oracle import TokenOracle
from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.engine import Engine
from mock_models.server.app import create_app
from mock_models.server.engine_worker import EngineWorker

ORACLE = TokenOracle(seed=0, vocab_size=1024)


def make_client(canary_mode: CanaryMode = CanaryMode.NONE, **extra) -> TestClient:
    engine = Engine(
        EngineConfig(model_mode=ModelMode.SWA, swa_window=16, max_total_tokens=512),
        canary_config=CanaryConfig(mode=canary_mode, real_kv_hash=RealKvHashMode.ALL),
    )
    return TestClient(create_app(EngineWorker(engine), **extra))


def generate(client, input_ids, max_new_tokens=4):
    return client.post(
        "/generate", json={"input_ids": input_ids, "sampling_params": {"max_new_tokens": max_new_tokens}}
    )


def test_generate_returns_the_oracles_tokens_and_sglang_meta_info():
    with make_client() as client:
        body = generate(client, [5, 6, 7], 6).json()
        again = generate(client, [5, 6, 7, 8], 2).json()
    assert body["output_ids"] == ORACLE.continuation([5, 6, 7], 6)
    meta = body["meta_info"]
    assert set(meta) == {
        "id",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "finish_reason",
        "attention_checksum",
        "e2e_latency",
        "output_steps",
        "output_digests",
    }
    assert (meta["prompt_tokens"], meta["completion_tokens"], meta["cached_tokens"]) == (3, 6, 0)
    assert len(meta["output_steps"]) == len(meta["output_digests"]) == 6
    assert meta["output_steps"] == sorted(meta["output_steps"])
    assert meta["attention_checksum"] == pytest.approx(sum(meta["output_digests"]))
    assert meta["finish_reason"] == {"type": "length", "length": 6}
    assert isinstance(meta["attention_checksum"], float)
    assert again["meta_info"]["cached_tokens"] == 3


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"input_ids": []}, 400, "empty"),
        ({"input_ids": [1, 1024]}, 400, "outside the vocabulary"),
        ({"input_ids": [1], "sampling_params": {"max_new_tokens": 0}}, 400, "must be >= 1"),
        ({"input_ids": [1] * 4000, "sampling_params": {"max_new_tokens": 200}}, 400, "max_context_len"),
        ({"input_ids": [1] * 400, "sampling_params": {"max_new_tokens": 200}}, 400, "pages"),
        ({"input_ids": "hello"}, 422, "input_ids"),
        ({"text": "hello"}, 422, "input_ids"),
        ({"input_ids": [1], "sampling_params": {"max_new_tokens": "many"}}, 422, "max_new_tokens"),
    ],
)
def test_bad_requests_get_a_4xx_that_says_why_and_the_server_keeps_serving(body, status, message):
    with make_client() as client:
        response = client.post("/generate", json=body)
        assert response.status_code == status
        assert message in response.text
        assert generate(client, [1, 2]).status_code == 200


def test_flush_cache_is_refused_while_busy_and_done_when_idle():
    with make_client() as client:
        worker = client.app.state.worker
        generate(client, [1, 2, 3, 4, 5], 3)
        busy = worker.generate([9, 9, 9], 100)
        refused = client.post("/flush_cache")
        busy.result(timeout=60)
        flushed = client.post("/flush_cache")
        info = client.get("/get_server_info").json()
    assert refused.status_code == 409 and "idle" in refused.json()["message"]
    assert flushed.status_code == 200 and flushed.json()["success"] is True
    assert worker.engine.radix_cache.total_size() == 0
    assert info["model_mode"] == "swa" and info["swa_window"] == 16 and info["forward_count"] > 100
    assert info["canary"]["mode"] == "none" and info["vocab_size"] == 1024 and info["page_size"] == 1


def test_canary_endpoints_report_violations_as_log_lines():
    with make_client(CanaryMode.LOG) as client:
        assert client.get("/kv_canary/violations").json() == {"count": 0, "lines": [], "canary_enabled": True}
        engine = client.app.state.worker.engine

        def corrupt_cached_kv(engine):
            for node in engine.radix_cache.nodes():
                engine.token_to_kv_pool.full_kv_pool.k_buffer[0][node.value] += 1.0

        generate(client, list(range(40)), 2)
        engine.add_step_hook(corrupt_cached_kv)
        generate(client, list(range(40)) + [7], 2)
        violations = client.get("/kv_canary/violations").json()
        stats = client.get("/kv_canary/stats").json()
    assert violations["count"] > 0 and violations["count"] == len(violations["lines"])
    assert all(ViolationRecord.parse(line) is not None for line in violations["lines"])
    assert stats["canary_enabled"] is True and stats["forward_count"] == engine.forward_count


def test_in_raise_mode_a_violation_answers_500_with_its_lines_and_the_server_keeps_serving():
    with make_client(CanaryMode.RAISE) as client:
        engine = client.app.state.worker.engine

        def corrupt_running_request(engine):
            if not engine.scheduler.running:
                return
            for req in engine.scheduler.running:
                slot = engine.req_to_token_pool.req_to_token[req.req_pool_idx, 0].long()
                engine.token_to_kv_pool.full_kv_pool.v_buffer[0][slot] += 1.0
            remove()

        generate(client, [3, 1, 4, 1, 5], 1)
        remove = engine.add_step_hook(corrupt_running_request)
        failed = generate(client, [9, 2, 6, 5, 3], 8)
        worker = client.app.state.worker
        while worker.call(lambda engine: engine.has_work()).result(timeout=60):
            time.sleep(0.01)  # the failed request runs on; batched with it, another would fail too
        served = generate(client, [2, 7, 1, 8], 3)
        violations = client.get("/kv_canary/violations").json()
    assert failed.status_code == 500
    assert failed.json()["detail"]["error"] == "kv_canary violation"
    assert all(ViolationRecord.parse(line) for line in failed.json()["detail"]["lines"])
    assert served.status_code == 200 and served.json()["output_ids"] == ORACLE.continuation([2, 7, 1, 8], 3)
    assert violations["count"] >= 1 and violations["lines"]


def test_canary_endpoints_without_the_canary():
    with make_client() as client:
        assert client.get("/kv_canary/violations").json()["count"] == 0
        assert client.get("/kv_canary/stats").json()["canary_enabled"] is False


def test_routers_added_later_reach_the_engine_through_the_worker():
    router = APIRouter()

    @router.get("/kv_canary/forwards")
    async def forwards(request: Request) -> dict:
        return {"forward_count": request.app.state.worker.engine.forward_count}

    with make_client(extra_routers=[router]) as client:
        generate(client, [1, 2], 3)
        assert client.get("/kv_canary/forwards").json() == {"forward_count": 3}


def test_after_shutdown_requests_get_503():
    with make_client() as client:
        client.app.state.worker.stop()
        assert generate(client, [1, 2]).status_code == 503
        assert client.get("/health").status_code == 503
        assert client.post("/flush_cache").status_code == 503


# -- a real server process ------------------------------------------------------------------------

READY = re.compile(r"kv_canary_server listening on http://([\d.]+):(\d+)")


class ServerProcess:
    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mock_models.server", "--port", "0", "--max-total-tokens", "1024", *args],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.log: list[str] = []
        ready = threading.Event()
        self.url = None

        def read_stderr():
            for line in self.process.stderr:
                self.log.append(line)
                match = READY.search(line)
                if match:
                    self.url = f"http://{match[1]}:{match[2]}"
                    ready.set()

        threading.Thread(target=read_stderr, daemon=True).start()
        if not ready.wait(60):
            self.process.kill()
            raise AssertionError("server did not print its ready line:\n" + "".join(self.log))

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


@pytest.fixture(scope="module")
def server():
    process = ServerProcess("--model-mode", "dsv4", "--swa-window", "16", "--canary-mode", "log")
    yield process
    if process.process.poll() is None:
        process.stop()


def test_the_server_answers_concurrent_clients(server):
    prompts = [list(range(i, i + 30)) for i in range(0, 160, 10)]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            responses = list(
                pool.map(
                    lambda prompt: client.post(
                        "/generate", json={"input_ids": prompt, "sampling_params": {"max_new_tokens": 24}}
                    ),
                    prompts,
                )
            )
        violations = client.get("/kv_canary/violations").json()
    assert [response.status_code for response in responses] == [200] * len(prompts)
    assert [response.json()["output_ids"] for response in responses] == [ORACLE.continuation(p, 24) for p in prompts]
    assert violations["count"] == 0


def test_a_client_that_goes_away_does_not_wedge_the_engine(server):
    with httpx.Client(base_url=server.url, timeout=0.05) as impatient, pytest.raises(httpx.TimeoutException):
        impatient.post("/generate", json={"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 500}})
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.post("/generate", json={"input_ids": [4, 5], "sampling_params": {"max_new_tokens": 3}}).json()[
            "output_ids"
        ] == ORACLE.continuation([4, 5], 3)
        assert client.get("/health").json() == {"status": "ok"}


def test_sigterm_fails_pending_requests_with_503_and_exits_cleanly():
    process = ServerProcess("--model-mode", "mha", "--canary-mode", "none")
    with httpx.Client(base_url=process.url, timeout=60) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            client.post, "/generate", json={"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 1000}}
        )
        deadline = time.monotonic() + 30
        while client.get("/get_server_info").json()["forward_count"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.stop() == 0
        assert pending.result().status_code == 503
    assert any("engine loop stopped" in line for line in process.log)


def test_the_harness_client_names_a_request_and_aborts_it(server):
    client = EngineClient(server.url, timeout_s=60)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(client.generate, [7, 8, 9], 900, rid="harness-long")
        deadline = time.monotonic() + 30
        while not client.abort("harness-long"):  # False until the request reached the engine
            assert time.monotonic() < deadline, "the request never became abortable"
            time.sleep(0.01)
        body = answer.result(timeout=60)
    assert body["meta_info"]["finish_reason"]["type"] == "abort" and body["meta_info"]["id"] == "harness-long"
    assert body["output_ids"] == ORACLE.continuation([7, 8, 9], len(body["output_ids"]))
    assert not client.abort("harness-long")
