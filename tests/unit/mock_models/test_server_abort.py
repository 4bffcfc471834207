"""SGLang's abort: ``/generate`` takes a ``rid``, ``POST /abort_request`` drops that request between forwards."""

from __future__ import annotations

import concurrent.futures
import time

from fastapi.testclient import TestClient

from kv_canary_contract.token_oracle import TokenOracle
from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.engine import Engine
from mock_models.server.app import create_app
from mock_models.server.engine_worker import EngineWorker

ORACLE = TokenOracle(seed=0, vocab_size=1024)
PROMPT = [5, 6, 7]


def make_client() -> tuple[TestClient, EngineWorker]:
    worker = EngineWorker(Engine(EngineConfig(model_mode=ModelMode.MHA, max_total_tokens=1024)))
    return TestClient(create_app(worker)), worker


def generate(client: TestClient, rid: str, max_new_tokens: int) -> dict:
    body = {"input_ids": PROMPT, "sampling_params": {"max_new_tokens": max_new_tokens}, "rid": rid}
    response = client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def wait_until_running(worker: EngineWorker, rid: str) -> None:
    deadline = time.monotonic() + 30
    while not (worker.is_pending(rid) and worker.engine.pending(rid) is not None):
        assert time.monotonic() < deadline, f"{rid} never started"
        time.sleep(0.005)


def test_abort_request_ends_a_running_generate_with_finish_reason_abort():
    client, worker = make_client()
    with client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(generate, client, "long", 900)
        wait_until_running(worker, "long")
        aborted = client.post("/abort_request", json={"rid": "long"})
        body = answer.result(timeout=60)
        again = generate(client, "long", 3)  # the rid is free again, and the engine serves on
        gone = client.post("/abort_request", json={"rid": "long"})
    assert aborted.status_code == 200 and aborted.json() == {"success": True, "aborted": 1}
    assert body["meta_info"]["finish_reason"]["type"] == "abort" and body["meta_info"]["id"] == "long"
    outputs = body["output_ids"]
    assert len(outputs) < 900 and outputs == ORACLE.continuation(PROMPT, len(outputs))
    assert again["output_ids"] == ORACLE.continuation(PROMPT, 3) and again["meta_info"]["id"] == "long"
    assert gone.json() == {"success": True, "aborted": 0}  # finished already: nothing to abort


def test_abort_all_drops_every_pending_request():
    client, worker = make_client()
    with client, concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = [pool.submit(generate, client, rid, 900) for rid in ("one", "two")]
        for rid in ("one", "two"):
            wait_until_running(worker, rid)
        aborted = client.post("/abort_request", json={"abort_all": True})
        bodies = [answer.result(timeout=60) for answer in answers]
    assert aborted.json() == {"success": True, "aborted": 2}
    assert [body["meta_info"]["finish_reason"]["type"] for body in bodies] == ["abort", "abort"]


def test_abort_request_needs_a_rid_and_a_rid_in_use_is_refused():
    client, worker = make_client()
    with client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        unnamed = client.post("/abort_request", json={})
        malformed = client.post("/abort_request", json={"rid": 7})
        answer = pool.submit(generate, client, "busy", 900)
        wait_until_running(worker, "busy")
        twice = client.post("/generate", json={"input_ids": PROMPT, "rid": "busy"})
        client.post("/abort_request", json={"rid": "busy"})
        answer.result(timeout=60)
    assert unnamed.status_code == 400 and "rid" in unnamed.json()["detail"]
    assert malformed.status_code == 422
    assert twice.status_code == 400 and "still running" in twice.json()["detail"]
