"""Hostile HTTP traffic: every bad request gets a 4xx that says why, the server keeps serving, nothing hangs.

In process (FastAPI's TestClient) for the bodies and the fuzz; a real server on a free port for
what only a socket can do: clients that disconnect mid-request, half-sent bodies, stalled headers.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
import requests
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.runner import ServerProcess
from harness.runner.server_command import DEFAULT_SERVER_COMMAND
from kv_canary import CanaryConfig, CanaryMode
from kv_canary_contract import FAULT_KINDS, TARGET_VALUES
from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.engine import Engine
from mock_models.faults import FaultInjector
from mock_models.server.app import create_app
from mock_models.server.engine_worker import EngineWorker
from mock_models.server.fault_routes import build_fault_router
from tests.reliability.conftest import FUZZ_SCALE
from tests.reliability.process_checks import assert_gone

VOCAB = 1024


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    engine = Engine(
        EngineConfig(model_mode=ModelMode.SWA, swa_window=8, max_total_tokens=512, max_context_len=256),
        canary_config=CanaryConfig(mode=CanaryMode.LOG),
    )
    with TestClient(create_app(EngineWorker(engine)), raise_server_exceptions=False) as test_client:
        yield test_client


def still_serving(client: TestClient) -> None:
    assert client.get("/health").status_code == 200
    answer = client.post("/generate", json={"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 2}})
    assert answer.status_code == 200 and len(answer.json()["output_ids"]) == 2


RAW_BODIES = {
    "not JSON": (b"hello", 422, "JSON decode error"),
    "empty": (b"", 422, "Field required"),
    "a JSON array": (b"[1, 2]", 422, "valid dictionary"),
    "NaN max_new_tokens": (b'{"input_ids": [1], "sampling_params": {"max_new_tokens": NaN}}', 422, "valid integer"),
    "Infinity token": (b'{"input_ids": [Infinity]}', 422, "valid integer"),
    "-Infinity token": (b'{"input_ids": [1, -Infinity]}', 422, "valid integer"),
    "bool tokens": (b'{"input_ids": [true, false]}', 422, "valid integer"),
    "string token": (b'{"input_ids": ["1"]}', 422, "valid integer"),
    "float token": (b'{"input_ids": [1.0]}', 422, "valid integer"),
    "string max_new_tokens": (b'{"input_ids": [1], "sampling_params": {"max_new_tokens": "8"}}', 422, "valid integer"),
    "null sampling_params": (b'{"input_ids": [1], "sampling_params": null}', 422, "valid dictionary"),
    "invalid UTF-8": (b'{"input_ids": [1], "text": "\xff"}', 400, "error parsing the body"),
    "deeply nested": (b"[" * 100_000 + b"]" * 100_000, 400, "error parsing the body"),
    "negative token": (b'{"input_ids": [-1]}', 400, "outside the vocabulary"),
    "token past the vocabulary": (b'{"input_ids": [1024]}', 400, "outside the vocabulary"),
    "huge token": (b'{"input_ids": [100000000000000000000000000000]}', 400, "outside the vocabulary"),
    "empty prompt": (b'{"input_ids": []}', 400, "empty"),
    "zero max_new_tokens": (b'{"input_ids": [1], "sampling_params": {"max_new_tokens": 0}}', 400, ">= 1"),
    "absurd max_new_tokens": (
        b'{"input_ids": [1], "sampling_params": {"max_new_tokens": 1000000000000000000000}}',
        400,
        "max_context_len",
    ),
    "oversized prompt": (json.dumps({"input_ids": [5] * 1_000_000}).encode(), 400, "max_context_len"),
}


@pytest.mark.parametrize("name", RAW_BODIES)
def test_a_bad_generate_body_gets_a_4xx_that_says_why(client, name):
    body, status, fragment = RAW_BODIES[name]
    answer = client.post("/generate", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text[:300]
    assert fragment in answer.text
    still_serving(client)


def test_wrong_methods_and_unknown_paths_are_4xx(client):
    for path in ("/generate", "/flush_cache"):
        assert client.get(path).status_code == 405
    for path in ("/health", "/get_server_info", "/kv_canary/violations", "/kv_canary/stats"):
        assert client.post(path, content=b"[[[").status_code == 405
    assert client.get("/no/such/path").status_code == 404
    assert client.post("/flush_cache", content=b"\x00garbage").status_code in (200, 409)
    still_serving(client)


JSON_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
TOKENS = st.integers(-3, VOCAB + 3) | st.sampled_from([2**31, 2**63, -(2**63), 10**30])
# Always with max_new_tokens: left out it defaults to 128, and valid bodies would make the fuzz slow.
NEAR_VALID = st.fixed_dictionaries(
    {
        "input_ids": st.lists(TOKENS, max_size=40) | JSON_VALUES,
        "sampling_params": st.fixed_dictionaries(
            {"max_new_tokens": st.integers(-2, 4) | st.sampled_from([10**6, 2**63, -(2**63)]) | JSON_SCALARS},
            optional={"temperature": JSON_SCALARS},
        ),
    },
    optional={"stream": JSON_SCALARS, "rid": JSON_VALUES},
)


@settings(max_examples=settings.default.max_examples * FUZZ_SCALE)
@given(body=NEAR_VALID | JSON_VALUES)
def test_random_generate_bodies_get_2xx_or_4xx_never_5xx(client, body):
    answer = client.post("/generate", json=body)
    assert answer.status_code < 500, (body, answer.text[:300])
    if answer.status_code == 200:
        assert len(answer.json()["output_ids"]) == body.get("sampling_params", {}).get("max_new_tokens", 128)


@settings(max_examples=settings.default.max_examples * FUZZ_SCALE // 5)
@given(
    path=st.sampled_from(["/flush_cache", "/kv_canary/violations", "/kv_canary/stats", "/get_server_info", "/health"]),
    method=st.sampled_from(["GET", "POST", "PUT"]),
    body=st.binary(max_size=64) | JSON_VALUES.map(lambda value: json.dumps(value).encode()),
)
def test_random_calls_to_the_other_endpoints_get_2xx_or_4xx_never_5xx(client, path, method, body):
    answer = client.request(method, path, content=body, headers={"content-type": "application/json"})
    assert answer.status_code < 500, answer.text[:300]


@pytest.fixture(scope="module")
def fault_client() -> Iterator[TestClient]:
    """A server with the fault router, as ``serve`` mounts it. Nothing here runs a forward, so the
    faults it accepts are scheduled but never applied."""
    engine = Engine(
        EngineConfig(model_mode=ModelMode.SWA, swa_window=8, max_total_tokens=512),
        canary_config=CanaryConfig(mode=CanaryMode.LOG),
    )
    router = build_fault_router(FaultInjector.install(engine))
    app = create_app(EngineWorker(engine), extra_routers=[router])
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


FAULT_BODIES = st.fixed_dictionaries(
    {"kind": st.sampled_from([*FAULT_KINDS, "flip_all_bits", ""]) | JSON_SCALARS},
    optional={
        "at_step": st.integers(-2, 50) | JSON_SCALARS,
        "after_warmup_steps": st.integers(-2, 50) | JSON_SCALARS,
        "probability": st.floats(-1, 2) | JSON_SCALARS,
        "seed": st.integers() | JSON_SCALARS,
        "count": st.integers(-1, 5) | JSON_SCALARS,
        "target": st.fixed_dictionaries(
            {},
            optional={
                key: st.sampled_from(sorted({value for values in TARGET_VALUES.values() for value in values}, key=str))
                | JSON_SCALARS
                for key in (*TARGET_VALUES, "colour")
            },
        )
        | JSON_VALUES,
    },
)


@settings(max_examples=settings.default.max_examples * FUZZ_SCALE)
@given(body=FAULT_BODIES | JSON_VALUES)
def test_random_inject_bodies_get_2xx_or_4xx_never_5xx(fault_client, body):
    answer = fault_client.post("/kv_canary/inject", json=body)
    assert answer.status_code in (200, 400, 422), (body, answer.text[:300])
    if answer.status_code == 200:
        assert isinstance(answer.json()["fault_id"], int)
    else:
        assert answer.json()["detail"]  # says why


def test_inject_with_non_finite_numbers_or_garbage_is_4xx(fault_client):
    for raw in (
        b'{"kind": "double_free", "probability": NaN, "seed": 1}',
        b'{"kind": "none", "at_step": Infinity}',
        b"\x00\x01",
        b"[" * 50_000,
    ):
        answer = fault_client.post("/kv_canary/inject", content=raw, headers={"content-type": "application/json"})
        assert 400 <= answer.status_code < 500, answer.text[:300]
    listed = fault_client.get("/kv_canary/injections")
    assert listed.status_code == 200 and all(entry["status"] == "scheduled" for entry in listed.json()["injections"])
    assert fault_client.get("/health").status_code == 200


def test_after_the_fuzz_the_server_is_healthy(client):
    still_serving(client)
    assert client.get("/kv_canary/violations").json()["count"] == 0


# -- a real server ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    argv = [*DEFAULT_SERVER_COMMAND, "--model-mode", "mha", "--max-total-tokens", "2048", "--canary-mode", "log"]
    process = ServerProcess(
        argv_for_port=lambda port: [*argv, "--port", str(port)],
        log_path=tmp_path_factory.mktemp("hostile-http") / "server.log",
    )
    with process:
        yield process
    assert_gone(process.pid, process.port)


def forward_count(server: ServerProcess) -> int:
    return requests.get(f"{server.base_url}/get_server_info", timeout=10).json()["forward_count"]


def raw_request(server: ServerProcess, payload: bytes) -> socket.socket:
    connection = socket.create_connection((server.host, server.port), timeout=10)
    connection.sendall(payload)
    return connection


def generate_payload(max_new_tokens: int, *, declared_length: int | None = None, cut: int | None = None) -> bytes:
    body = json.dumps({"input_ids": [7, 8, 9], "sampling_params": {"max_new_tokens": max_new_tokens}}).encode()
    head = (
        f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared_length or len(body)}\r\n\r\n"
    ).encode()
    return head + body[:cut]


def test_clients_that_disconnect_mid_request_have_their_requests_aborted(server):
    before = forward_count(server)
    leavers = [raw_request(server, generate_payload(1500)) for _ in range(4)]
    deadline = time.monotonic() + 30
    while forward_count(server) < before + 3 and time.monotonic() < deadline:  # they are running
        time.sleep(0.05)
    for connection in leavers:
        connection.close()
    # 4 x 1500 tokens would take thousands of forwards; aborted, the engine goes idle at once.
    deadline = time.monotonic() + 30
    while True:
        first = forward_count(server)
        time.sleep(0.5)
        if forward_count(server) == first:
            break
        assert time.monotonic() < deadline, "the engine kept generating for clients that left"
    assert first - before < 1500
    answer = requests.post(
        f"{server.base_url}/generate", json={"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 3}}, timeout=30
    )
    assert answer.status_code == 200 and len(answer.json()["output_ids"]) == 3
    assert "request" in server.log_text() and "aborted" in server.log_text()


def test_half_sent_bodies_and_stalled_headers_do_not_block_other_clients(server):
    stalled = [
        raw_request(server, b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Le"),
        raw_request(server, generate_payload(4, declared_length=4096, cut=10)),
    ]
    try:
        for _ in range(3):
            answer = requests.post(
                f"{server.base_url}/generate",
                json={"input_ids": [3], "sampling_params": {"max_new_tokens": 2}},
                timeout=30,
            )
            assert answer.status_code == 200
    finally:
        for connection in stalled:
            connection.close()
    assert requests.get(f"{server.base_url}/health", timeout=10).status_code == 200


def test_a_flood_of_bad_requests_leaves_the_server_healthy(server):
    session = requests.Session()
    statuses = {
        session.post(
            f"{server.base_url}/generate", data=body, timeout=30, headers={"content-type": "application/json"}
        ).status_code
        for body, _, _ in list(RAW_BODIES.values()) * 3
    }
    assert statuses and max(statuses) < 500
    assert requests.get(f"{server.base_url}/health", timeout=10).status_code == 200


def test_the_server_log_has_no_traceback_after_the_abuse(server):
    assert "Traceback" not in server.log_text(), server.log_tail()
