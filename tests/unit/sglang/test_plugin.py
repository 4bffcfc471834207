"""The SGLang plugin: off unless KV_CANARY_MODE turns it on; installs before graph capture; attaches
the sweep once the tree exists; runs the host step once per forward, graph replays included; and
turns the token checks on from SGLang's token snapshot."""

from __future__ import annotations

import types

import pytest
import torch

from kv_canary import CanaryConfig, CanaryMode, KernelBackend
from kv_canary.integrations.sglang import plugin
from kv_canary.integrations.sglang.token_table import RequestTokenTable
from kv_canary.plans import TOKEN_UNKNOWN
from tests.unit.sglang.sglang_engine import SglangEngine

pytestmark = pytest.mark.sglang

OFF = CanaryConfig(mode=CanaryMode.NONE)
ON = CanaryConfig(
    backend=KernelBackend.TORCH,
    stats_interval=0,
    health_check_interval=0,
    sweep_interval=1,
    verify_capacity=256,
    write_capacity=128,
    max_requests_per_forward=4,
)


@pytest.fixture
def hooks():
    """SGLang's global hook registry, restored after the test."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    saved = {target: list(entries) for target, entries in HookRegistry._hooks.items()}
    HookRegistry._hooks.clear()
    yield HookRegistry._hooks
    HookRegistry._hooks.clear()
    HookRegistry._hooks.update(saved)


@pytest.mark.parametrize("mode", [None, "none", " NONE "])
def test_without_kv_canary_mode_the_plugin_registers_nothing(hooks, monkeypatch, mode):
    monkeypatch.delenv(plugin.MODE_VARIABLE, raising=False)
    if mode is not None:
        monkeypatch.setenv(plugin.MODE_VARIABLE, mode)
    plugin.register()
    assert dict(hooks) == {}


def test_with_kv_canary_mode_it_hooks_the_scheduler_and_the_model_runner(hooks, monkeypatch):
    monkeypatch.setenv(plugin.MODE_VARIABLE, "log")
    monkeypatch.setenv("KV_CANARY_SWEEP_INTERVAL", "4")
    plugin.register()
    assert set(hooks) == {
        "sglang.srt.managers.scheduler.Scheduler.init_all_cuda_graphs",
        "sglang.srt.managers.scheduler.Scheduler.__init__",
        "sglang.srt.model_executor.model_runner.ModelRunner.forward",
    }
    assert plugin.plugin_config().sweep_interval == 4


def started_scheduler(mode: str = "mha") -> tuple[SglangEngine, object]:
    """A scheduler stand-in run through the plugin's two start-up hooks, as SGLang would."""
    engine = SglangEngine(OFF, mode=mode, tree="unified-python")
    scheduler = types.SimpleNamespace(tp_worker=types.SimpleNamespace(model_runner=engine.model_runner))
    captured = []
    plugin._install_before_capture(ON)(
        lambda sched: captured.append(plugin.installed_canary(sched.tp_worker.model_runner)), scheduler
    )
    assert captured[0] is not None, "the canary must be installed before the graphs are captured"
    scheduler.tree_cache = engine.tree_cache
    plugin._attach_tree_cache(None, scheduler)
    return engine, plugin.installed_canary(engine.model_runner)


def test_the_start_up_hooks_install_before_capture_then_attach_the_tree_and_restart_the_count():
    engine, canary = started_scheduler()
    assert canary.manager.prefix_cache is not None
    assert "forward" in vars(engine.model_runner.model)
    assert int(canary.manager.state.step) == 0 and canary.manager.forward_count == 0


def test_the_host_step_runs_once_per_forward_also_when_the_model_forward_is_never_called():
    engine, canary = started_scheduler()
    request = engine.add_request([5, 6, 7, 8])
    calls = []

    def eager(model_runner, forward_batch):  # ModelRunner.forward running the model
        calls.append("eager")
        engine.forward([request])

    def replayed(model_runner, forward_batch):  # a CUDA-graph replay: the wrapped model.forward never runs
        calls.append("replay")

    plugin._forward_with_host_step(eager, engine.model_runner, types.SimpleNamespace())
    assert canary.manager.forward_count == 1
    plugin._forward_with_host_step(replayed, engine.model_runner, types.SimpleNamespace())
    assert canary.manager.forward_count == 2 and calls == ["eager", "replay"]


def test_a_runner_the_plugin_did_not_install_on_passes_straight_through():
    other = type("ModelRunner", (), {})()
    assert plugin._forward_with_host_step(lambda runner, batch: "output", other, None) == "output"


def snapshot(rows_and_tokens: list[tuple[int, list[int]]]) -> types.SimpleNamespace:
    flat = [token for _, tokens in rows_and_tokens for token in tokens]
    return types.SimpleNamespace(
        req_pool_indices=torch.tensor([row for row, _ in rows_and_tokens]),
        req_all_ids_flat=torch.tensor(flat, dtype=torch.int64),
        req_all_ids_lens=torch.tensor([len(tokens) for _, tokens in rows_and_tokens], dtype=torch.int64),
    )


def test_the_token_table_takes_each_requests_tokens_into_its_row():
    table = RequestTokenTable(torch.zeros(4, 8, dtype=torch.int32))
    table.update(snapshot([(2, [7, 8, 9]), (1, [4])]))
    assert table.req_token_ids[2, :4].tolist() == [7, 8, 9, TOKEN_UNKNOWN]
    assert table.req_token_ids[1, :2].tolist() == [4, TOKEN_UNKNOWN]
    assert table.updates == 1
    table.update(types.SimpleNamespace(req_all_ids_flat=None, req_all_ids_lens=None))  # no snapshot: unchanged
    assert table.updates == 1 and table.req_token_ids[2, 0] == 7


def run_with_snapshot(engine: SglangEngine, request, recorded: list[int], new_tokens: list[int]) -> None:
    """One engine forward through the plugin's ModelRunner hook, its batch carrying ``recorded`` as the snapshot."""
    model = engine.model_runner.model
    canary_forward = model.forward

    def model_runner_forward(input_ids, positions, batch):
        batch.req_all_ids_flat = torch.tensor(recorded, dtype=torch.int64)
        batch.req_all_ids_lens = torch.tensor([len(recorded)], dtype=torch.int64)
        return plugin._forward_with_host_step(
            lambda runner, fb: canary_forward(input_ids, positions, fb), engine.model_runner, batch
        )

    model.forward = model_runner_forward
    try:
        engine.forward([request], [new_tokens])
    finally:
        model.forward = canary_forward


def test_with_the_snapshot_a_fed_token_other_than_the_recorded_one_is_reported():
    engine, canary = started_scheduler()
    request = engine.add_request([5, 6, 7, 8])
    run_with_snapshot(engine, request, [5, 6, 7, 8], [])
    run_with_snapshot(engine, request, [5, 6, 7, 8, 9], [9])
    canary.manager.flush()
    assert canary.manager.violations == []
    run_with_snapshot(engine, request, [5, 6, 7, 8, 9, 10], [11])  # fed 11 where the scheduler recorded 10
    canary.manager.flush()
    reasons = {reason for violation in canary.manager.violations for reason in violation.fail_reasons}
    assert "write_token" in reasons, reasons
    assert canary.tokens.updates == 3


def test_sglangs_own_canary_and_ours_are_never_both_installed():
    engine = SglangEngine(OFF, mode="mha", tree=None)
    engine.model_runner.canary_manager = object()
    scheduler = types.SimpleNamespace(tp_worker=types.SimpleNamespace(model_runner=engine.model_runner))
    from kv_canary.integrations.sglang import KvCanaryInstallError

    with pytest.raises(KvCanaryInstallError, match="SGLang's own KV canary"):
        plugin._install_before_capture(ON)(lambda sched: None, scheduler)
