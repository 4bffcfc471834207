"""No inject body can wedge the engine thread; if the thread is stuck anyway, ``/health`` says so and
SIGTERM still stops the server.

Once, ``{"kind": "none", "at_step": 1000000, "count": 1.2e29}`` made the engine thread create (and
log) one entry per application before answering: the request never returned, the log grew by
gigabytes, ``/health`` answered 200 and SIGTERM did not stop the process.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from fastapi.testclient import TestClient

from harness.runner import ServerProcess
from kv_canary import CanaryConfig, CanaryMode
from kv_canary_contract import Fault
from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.engine import Engine
from mock_models.faults import FaultInjector
from mock_models.faults.fault_request import resolve
from mock_models.faults.injection_log import FaultLogLine
from mock_models.server.app import create_app
from mock_models.server.engine_worker import EngineWorker
from mock_models.server.fault_routes import build_fault_router
from mock_models.server.main import ENGINE_STOP_GRACE_S, EXIT_ENGINE_STUCK
from tests.reliability.process_checks import assert_gone

HUGE_COUNT = 12 * 10**28


def _engine() -> Engine:
    return Engine(
        EngineConfig(model_mode=ModelMode.MHA, max_total_tokens=512), canary_config=CanaryConfig(mode=CanaryMode.LOG)
    )


def test_a_fault_with_a_huge_count_is_registered_at_once_with_one_entry(caplog):
    caplog.set_level(logging.INFO, logger="mock_models.faults")
    engine = _engine()
    injector = FaultInjector.install(engine)
    spec = resolve(Fault(kind="none"), engine.config, canary_installed=True)
    # The body's bounds (the shared fault contract) are not what keeps the engine safe: the spec goes in directly.
    registered = threading.Thread(
        target=injector.schedule, args=(dataclasses.replace(spec, count=HUGE_COUNT),), daemon=True
    )
    registered.start()
    registered.join(5)
    assert not registered.is_alive(), "registering a fault with a huge count did not return"
    assert [(entry.status, entry.step) for entry in injector.log.entries] == [("scheduled", None)]
    engine.submit([1, 2, 3], 4)
    engine.run_until_idle(max_steps=10)  # one application per forward from the next one, each logged once
    steps = [entry.step for entry in injector.log.entries]
    assert steps[:-1] == list(range(1, engine.forward_count + 1)) and steps[-1] is None
    assert len(FaultLogLine.find_all(caplog.text)) == 2 * len(steps) - 1  # scheduled + applied, and the next


@pytest.fixture
def served() -> Iterator[tuple[TestClient, EngineWorker]]:
    engine = _engine()
    worker = EngineWorker(engine, stuck_after_s=0.5)
    app = create_app(worker, extra_routers=[build_fault_router(FaultInjector.install(engine))])
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, worker


def test_inject_with_a_huge_count_is_answered_and_the_server_stays_healthy(served):
    client, _ = served
    started = time.monotonic()
    answer = client.post("/kv_canary/inject", json={"kind": "none", "at_step": 1_000_000, "count": HUGE_COUNT})
    assert answer.status_code in (200, 400, 422), answer.text  # the contract bounds the body; answered at once
    assert time.monotonic() - started < 5
    assert client.get("/health").status_code == 200
    generated = client.post("/generate", json={"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 3}})
    assert generated.status_code == 200
    assert len(client.get("/kv_canary/injections").json()["injections"]) <= 1


def test_health_answers_503_while_the_engine_thread_is_stuck(served):
    client, worker = served
    release = threading.Event()
    worker.call(lambda _engine: release.wait(30))
    deadline = time.monotonic() + 10
    while (health := client.get("/health")).status_code == 200:
        assert time.monotonic() < deadline, "GET /health kept answering 200 while the engine thread was stuck"
        time.sleep(0.1)
    assert health.status_code == 503
    assert health.json()["status"] == "stuck"
    assert "test_health_answers_503_while_the_engine_thread_is_stuck" in health.json()["detail"]
    assert "the limit is 0.5 s" in health.json()["detail"]
    release.set()
    deadline = time.monotonic() + 10
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, "GET /health stayed 503 after the engine thread was released"
        time.sleep(0.1)


# The real server, with fault registration replaced by a spin that logs every turn, as the old one did.
_WEDGING_SERVER = textwrap.dedent("""
    import logging
    import mock_models.server.main as main
    from mock_models.faults.injector import FaultInjector

    def spin(self, spec):
        while True:
            logging.getLogger("mock_models.faults").info("kv_canary_fault spinning")

    FaultInjector.schedule = spin
    real_worker = main.EngineWorker
    main.EngineWorker = lambda engine: real_worker(engine, stuck_after_s=1.0)
    main.serve_command()
""")


def test_sigterm_stops_a_server_whose_engine_thread_is_stuck(tmp_path):
    server = ServerProcess(
        argv_for_port=lambda port: [sys.executable, "-c", _WEDGING_SERVER, "--model-mode", "mha", "--port", str(port)],
        log_path=tmp_path / "server.log",
    )
    with server:
        with pytest.raises(requests.Timeout):
            requests.post(f"{server.base_url}/kv_canary/inject", json={"kind": "none"}, timeout=2)
        health = requests.get(f"{server.base_url}/health", timeout=10)
        assert (health.status_code, health.json()["status"]) == (503, "stuck"), health.text
        os.kill(server.pid, signal.SIGTERM)
        assert server.wait_for_exit(ENGINE_STOP_GRACE_S + 10), "SIGTERM did not stop the server"
        assert "the engine thread did not stop within" in server.log_text()
    assert server.exit_code == EXIT_ENGINE_STUCK
    assert_gone(server.pid, server.port)
