"""The live SGLang server's command line, environment and model, from a scenario's engine settings."""

from __future__ import annotations

import importlib.metadata
import json
import os

import pytest
from click.testing import CliRunner

from harness.cli import EXIT_BAD_INPUT, cli
from harness.runner.errors import RunnerError
from harness.scenario.model import EngineSettings
from harness.sglang.model_configs import model_config, write_model
from harness.sglang.server import SglangLaunch, server_argv, server_env
from harness.sglang.target import SglangTarget
from sglang_faults.settings import PORT_VARIABLE, TOKEN_VARIABLE

ENGINE = EngineSettings.model_validate(
    {
        "max_total_tokens": 1024,
        "swa_window": 32,
        "sweep_interval": 4,
        "real_kv": "all",
        "chunked_prefill_size": 64,
        "seed": 3,
    }
)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_engine_settings_become_sglang_flags(tmp_path):
    argv = server_argv(SglangLaunch(device="cuda"), ENGINE, mode="mha", model_dir=tmp_path, port=4321)
    assert argv[1:3] == ["-m", "sglang.launch_server"]
    assert flag(argv, "--max-total-tokens") == "1024"
    assert flag(argv, "--chunked-prefill-size") == "64"
    assert flag(argv, "--random-seed") == "3"
    assert flag(argv, "--page-size") == "1"
    assert flag(argv, "--port") == "4321" and flag(argv, "--host") == "127.0.0.1"
    assert "--max-running-requests" not in argv  # not set: SGLang's own default
    assert {"--skip-tokenizer-init", "--disable-overlap-schedule", "--disable-cuda-graph"} <= set(argv)


def test_cuda_graphs_on_bound_the_captured_sizes_instead_of_disabling_them(tmp_path):
    argv = server_argv(SglangLaunch(device="cuda", cuda_graphs=True), ENGINE, mode="swa", model_dir=tmp_path, port=1)
    assert "--disable-cuda-graph" not in argv
    assert flag(argv, "--cuda-graph-max-bs-decode") == "8"


def test_the_cpu_runs_sglangs_cpu_engine_with_torch_native_attention(tmp_path):
    launch = SglangLaunch(device="cpu")
    argv = server_argv(launch, ENGINE, mode="mha", model_dir=tmp_path, port=1)
    assert flag(argv, "--device") == "cpu" and flag(argv, "--attention-backend") == "torch_native"
    assert "--swa-full-tokens-ratio" not in argv
    swa = server_argv(launch, ENGINE, mode="swa", model_dir=tmp_path, port=1)
    assert flag(swa, "--swa-full-tokens-ratio") == "1"  # the torch-native backend reads SWA layers at full slots
    assert (
        server_env(launch, ENGINE, injector_port=2, token="t", swa_divergence_interval=None)["SGLANG_USE_CPU_ENGINE"]
        == "1"
    )
    with pytest.raises(ValueError, match="CUDA graphs need device cuda"):
        SglangLaunch(device="cpu", cuda_graphs=True)


def test_the_environment_turns_the_canary_the_token_snapshot_and_the_injector_on():
    env = server_env(SglangLaunch(), ENGINE, injector_port=5555, token="secret", swa_divergence_interval=1)
    assert env["KV_CANARY_MODE"] == "log"
    assert env["KV_CANARY_REAL_KV_HASH"] == "all"
    assert env["KV_CANARY_SWEEP_INTERVAL"] == "4"
    assert env["KV_CANARY_SWA_DIVERGENCE_INTERVAL"] == "1"
    assert env["SGLANG_KV_CANARY_ENABLE_VERIFY_TOKEN_ASSERT"] == "1"
    assert env["SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND"] == "python"
    assert env[PORT_VARIABLE] == "5555" and env[TOKEN_VARIABLE] == "secret"
    assert "SGLANG_USE_CPU_ENGINE" not in env


def test_the_swa_model_has_one_window_layer_whose_window_is_the_scenarios(tmp_path):
    config = json.loads((write_model(tmp_path / "m", "swa", swa_window=32) / "config.json").read_text())
    assert config["architectures"] == ["MellumForCausalLM"]
    assert config["sliding_window"] == 33  # SGLang's Mellum reads sliding_window - 1 tokens of history
    assert config["layer_types"] == ["sliding_attention", "full_attention"]
    assert model_config("mha", swa_window=32)["architectures"] == ["LlamaForCausalLM"]
    with pytest.raises(ValueError, match="dsv4"):
        model_config("dsv4", swa_window=32)


def test_each_server_gets_its_own_token_and_injector_port(tmp_path):
    target = SglangTarget(launch=SglangLaunch())
    first = target.server(ENGINE, "mha", log_path=tmp_path / "a.log", swa_divergence_interval=None)
    second = target.server(ENGINE, "mha", log_path=tmp_path / "b.log", swa_divergence_interval=None)
    assert len(first.token) == 64 and first.token != second.token
    assert first.injector_url.startswith("http://127.0.0.1:")
    client = target.client(first, timeout_s=5)
    assert client.headers == {"Authorization": f"Bearer {first.token}"} and client.base_url == first.injector_url


def test_only_the_servers_the_harness_starts_get_the_injectors_entry_point(tmp_path):
    server = SglangTarget(launch=SglangLaunch()).server(
        ENGINE, "mha", log_path=tmp_path / "a.log", swa_divergence_interval=None
    )
    plugins = server._env["PYTHONPATH"].split(os.pathsep)[0]
    found = [
        (entry_point.name, entry_point.value)
        for distribution in importlib.metadata.distributions(path=[plugins])
        for entry_point in distribution.entry_points
        if entry_point.group == "sglang.srt.plugins"
    ]
    assert found == [("kv_canary_fault_injector", "sglang_faults.plugin:register")]
    ours = importlib.metadata.distribution("kv-canary").entry_points
    assert [ep.value for ep in ours if ep.group == "sglang.srt.plugins"] == [
        "kv_canary.integrations.sglang.plugin:register"
    ]


def test_modes_and_page_sizes_the_live_target_cannot_run_are_refused(tmp_path):
    target = SglangTarget(launch=SglangLaunch())
    with pytest.raises(RunnerError, match="dsv4"):
        target.server(ENGINE, "dsv4", log_path=tmp_path / "a.log", swa_divergence_interval=None)
    with pytest.raises(RunnerError, match="page_size"):
        target.server(
            ENGINE.model_copy(update={"page_size": 16}),
            "mha",
            log_path=tmp_path / "b.log",
            swa_divergence_interval=None,
        )


def test_cuda_graphs_without_the_sglang_target_or_on_the_cpu_is_bad_input():
    runner = CliRunner()
    mock = runner.invoke(cli, ["run", "scenarios/baseline.yaml", "--cuda-graphs"])
    assert mock.exit_code == EXIT_BAD_INPUT and "--target sglang only" in mock.output
    cpu = runner.invoke(cli, ["run", "scenarios/baseline.yaml", "--target", "sglang", "--cuda-graphs"])
    assert cpu.exit_code == EXIT_BAD_INPUT and "CUDA graphs need device cuda" in cpu.output
