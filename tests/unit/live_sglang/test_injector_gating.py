"""The fault injector is absent unless a test run enables it: the runtime never imports it, its
entry point registers nothing without its variables, and its routes refuse what the live target
cannot inject before anything reaches the scheduler."""

from __future__ import annotations

import ast
import threading
import types
from pathlib import Path

import pytest

from harness.sglang.injector.http_api import HttpError
from harness.sglang.injector.scheduler_tasks import SchedulerTasks
from harness.sglang.injector.service import InjectorService

RUNTIME = Path(__file__).resolve().parents[3] / "kv_canary"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_runtime_never_imports_the_injector_or_the_harness():
    offenders = {
        str(path.relative_to(RUNTIME.parent)): sorted(
            name for name in imported_modules(path) if name.startswith(("harness", "mock_models"))
        )
        for path in RUNTIME.rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


@pytest.mark.sglang
def test_without_its_variables_the_injector_entry_point_registers_nothing(monkeypatch):
    HookRegistry = pytest.importorskip("sglang.srt.plugins.hook_registry").HookRegistry

    from harness.sglang.injector import plugin
    from harness.sglang.injector.settings import PORT_VARIABLE, TOKEN_VARIABLE

    monkeypatch.delenv(PORT_VARIABLE, raising=False)
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    before = {target: list(entries) for target, entries in HookRegistry._hooks.items()}
    plugin.register()
    assert {target: list(entries) for target, entries in HookRegistry._hooks.items()} == before


class FakeInjector:
    def __init__(self) -> None:
        self.server = types.SimpleNamespace(window=None)
        self.scheduled = []
        self.scheduled_on = []

    def schedule(self, spec) -> int:
        self.scheduled.append(spec)
        self.scheduled_on.append(threading.current_thread().name)
        return len(self.scheduled)


@pytest.fixture
def service():
    injector, tasks = FakeInjector(), SchedulerTasks()
    stop = threading.Event()

    def scheduler_loop() -> None:
        while not stop.is_set():
            tasks.run_pending()
            stop.wait(0.01)

    thread = threading.Thread(target=scheduler_loop, name="scheduler")
    thread.start()
    yield InjectorService(injector, tasks, canary=object), injector
    stop.set()
    thread.join()


def test_a_body_of_the_wrong_shape_is_422_and_schedules_nothing(service):
    routes, injector = service
    for body in (
        {"kind": "melt_gpu", "at_step": 1},
        {"kind": "double_free", "at_step": "1"},
        {"kind": "double_free", "when": 1},
    ):
        with pytest.raises(HttpError) as refused:
            routes.inject(body)
        assert refused.value.status == 422
    assert injector.scheduled == []


def test_a_fault_that_cannot_apply_here_is_400_and_schedules_nothing(service):
    routes, injector = service
    for body, why in (
        ({"kind": "double_free"}, "say when"),
        ({"kind": "remap_swa_slot", "at_step": 3}, "no SWA pool"),
        ({"kind": "stale_prefix", "at_step": 3}, "does not implement"),
    ):
        with pytest.raises(HttpError, match=why) as refused:
            routes.inject(body)
        assert refused.value.status == 400
    assert injector.scheduled == []


def test_an_accepted_fault_is_scheduled_on_the_scheduler_thread(service):
    routes, injector = service
    assert routes.inject({"kind": "double_free", "at_step": 5, "target": {"slot": "used"}}) == {"fault_id": 1}
    (spec,) = injector.scheduled
    assert spec.at_step == 5 and spec.target.group == "full" and spec.target.request == "running"
    assert injector.scheduled_on == ["scheduler"]
