"""The fault injector is absent unless a test run enables it: its entry point registers nothing
without its variables (that the runtime never imports it is import-linter's contract
``runtime-alone``, and that kv-canary declares no entry point for it is
tests/packaging/test_runtime_install.py's), and its routes refuse what the live target cannot
inject before anything reaches the scheduler."""

from __future__ import annotations

import threading
import types

import pytest

from sglang_faults.http_api import HttpError
from sglang_faults.scheduler_tasks import SchedulerTasks
from sglang_faults.service import InjectorService


@pytest.mark.sglang
def test_without_its_variables_the_injector_entry_point_registers_nothing(monkeypatch):
    HookRegistry = pytest.importorskip("sglang.srt.plugins.hook_registry").HookRegistry

    from sglang_faults import plugin
    from sglang_faults.settings import PORT_VARIABLE, TOKEN_VARIABLE

    monkeypatch.delenv(PORT_VARIABLE, raising=False)
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    before = {target: list(entries) for target, entries in HookRegistry._hooks.items()}
    plugin.register()
    assert {target: list(entries) for target, entries in HookRegistry._hooks.items()} == before


class FakeInjector:
    def __init__(self) -> None:
        self.server = types.SimpleNamespace(window=None)
        self.scheduled: list[object] = []
        self.scheduled_on: list[str] = []

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
