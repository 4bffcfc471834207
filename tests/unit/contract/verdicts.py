"""The two judges of a fault body and of engine settings, asked the same question.

* the validator: ``kv-canary validate``'s loader, on a scenario whose ``fault`` (or ``engine``)
  mapping is the body and whose other keys are valid; its verdict is the problems under that key;
* the server: ``POST /kv_canary/inject`` on an in-process mock server of the mode (the route, its
  request model and ``resolve``), and for engine settings the server's own flag parser and config
  builder (``serve_command``'s options, ``build_configs``), stopping short of serving.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path

import click
import pytest
import yaml
from fastapi.testclient import TestClient

from harness.scenario import ScenarioValidationError
from harness.scenario.loader import load_scenario_text
from kv_canary import CanaryConfig, CanaryMode
from kv_canary_contract import MODEL_MODES, setting_flag
from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.engine import Engine
from mock_models.faults import FaultInjector
from mock_models.server.app import create_app
from mock_models.server.engine_worker import EngineWorker
from mock_models.server.fault_routes import build_fault_router
from mock_models.server.flags import build_configs
from mock_models.server.main import serve_command


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Verdict:
    accepted: bool
    reasons: tuple[str, ...]  # validator: 'key: message' lines; server: the answer's detail


def validator_verdict(*, mode: str, fault: object = None, engine: object = None, tp: int = 1) -> Verdict:
    """What ``kv-canary validate`` says about the ``fault`` or ``engine`` mapping, in a scenario for
    ``mode`` (a ``fault`` on an engine of ``tp`` tensor-parallel ranks)."""
    injects = isinstance(fault, Mapping) and fault.get("kind") != "none"
    document: dict[str, object] = {
        "name": "probe",
        "description": "the fault or engine settings under test, in an otherwise valid scenario",
        "model_modes": [mode],
        "workload": {"requests": [{"prompt_len": 1, "max_new_tokens": 1}]},
        "expect": {"detected": True, "within_steps": 4} if injects else {"detected": False},
    }
    key = "fault" if engine is None else "engine"
    document[key] = fault if engine is None else engine
    if engine is None and tp > 1:
        document["engine"] = {"tp": tp}
    try:
        load_scenario_text(yaml.safe_dump(document, sort_keys=False), Path("probe.yaml"))
    except ScenarioValidationError as error:
        reasons = tuple(f"{p.key}: {p.message}" for p in error.problems if p.key == key or p.key.startswith(f"{key}."))
        return Verdict(accepted=not reasons, reasons=reasons)
    return Verdict(accepted=True, reasons=())


def server_fault_verdict(client: TestClient, fault: object) -> Verdict:
    answer = client.post("/kv_canary/inject", json=fault)
    assert answer.status_code in (200, 400, 422), answer.text
    return Verdict(accepted=answer.status_code == 200, reasons=() if answer.is_success else (answer.text,))


def server_settings_verdict(*, mode: str, engine: Mapping[str, object]) -> Verdict:
    argv = ["--model-mode", mode]
    for name, value in engine.items():
        argv += [setting_flag(name), str(value)]
    try:
        with serve_command.make_context("serve", argv) as context:
            params = dict(context.params)
        model_mode, device, mem_backend = params.pop("model_mode"), params.pop("device"), params.pop("mem_backend")
        del params["host"], params["port"]
        build_configs(model_mode=model_mode, device=device, mem_backend=mem_backend, settings=params)
    except (click.ClickException, ValueError) as refused:
        return Verdict(accepted=False, reasons=(str(refused),))
    return Verdict(accepted=True, reasons=())


@pytest.fixture(scope="module")
def inject_clients() -> Iterator[dict[str, TestClient]]:
    """One in-process server per mode, with the canary on and the fault router, as ``serve`` mounts them.
    Nothing runs a forward, so the faults it accepts stay scheduled."""
    clients: dict[str, TestClient] = {mode: _inject_client(mode, tp=1) for mode in MODEL_MODES}
    yield clients
    for client in clients.values():
        client.__exit__(None, None, None)


# A process joins one torch.distributed group, so it serves one engine of several ranks at a time.
TWO_RANK_MODE = "mha"


@pytest.fixture(scope="module")
def two_rank_inject_client() -> Iterator[TestClient]:
    """As ``inject_clients``, for an engine of two tensor-parallel ranks (rank 1 a process of its own)."""
    client = _inject_client(TWO_RANK_MODE, tp=2)
    yield client
    client.__exit__(None, None, None)


def _inject_client(mode: str, *, tp: int) -> TestClient:
    engine = Engine(
        EngineConfig(model_mode=ModelMode(mode), swa_window=8, max_total_tokens=256, tp=tp),
        canary_config=CanaryConfig(mode=CanaryMode.LOG),
    )
    app = create_app(EngineWorker(engine), extra_routers=[build_fault_router(FaultInjector.install(engine))])
    return TestClient(app, raise_server_exceptions=False).__enter__()
