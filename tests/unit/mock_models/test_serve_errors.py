"""``kv-canary serve`` with a setting it cannot run with: one line that names the flag, exit status 2."""

from __future__ import annotations

import socket

import pytest
import torch
from click.testing import CliRunner

from kv_canary import CanaryConfig, CanaryMode
from mock_models.config import EngineConfig
from mock_models.server import startup
from mock_models.server.main import serve_command
from mock_models.server.startup import ServeError, build_engine


def refused(*args: str) -> str:
    result = CliRunner().invoke(serve_command, list(args), catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output.strip().splitlines()[-1]


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_a_port_outside_the_tcp_range(port):
    assert refused("--port", port) == f"Error: --port {port}: a TCP port is 0..65535 (0 picks a free one)"


def test_a_host_that_does_not_resolve():
    assert refused("--host", "no-such-host.invalid", "--port", "0").startswith(
        "Error: --host no-such-host.invalid: cannot be resolved ("
    )


def test_a_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert refused("--port", str(port)).startswith(f"Error: --port {port}: address already in use on 127.0.0.1")


def test_an_absurd_pool_size():
    assert refused("--port", "0", "--max-total-tokens", "1000000000000000").startswith(
        "Error: max_total_tokens: 1000000000000000 is too large"
    )


CPU_ALLOCATION_FAILURE = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
    "allocate 536870912 bytes. Error code 12 (Cannot allocate memory)"
)


@pytest.mark.parametrize(
    "failure", [RuntimeError(CPU_ALLOCATION_FAILURE), torch.OutOfMemoryError("CUDA out of memory"), MemoryError()]
)
def test_pools_that_do_not_fit_in_memory(monkeypatch, failure):
    # The contract's bounds keep the pools to a size that fits a usual machine; one short of memory still fails.
    def allocate(*_args: object, **_kwargs: object) -> None:
        raise failure

    monkeypatch.setattr(startup, "build_feature_engine", allocate)
    with pytest.raises(ServeError) as refusal:
        build_engine(EngineConfig(max_total_tokens=1 << 20), CanaryConfig(mode=CanaryMode.NONE))
    assert refusal.value.exit_code == 2
    message = refusal.value.message
    assert message.startswith("--max-total-tokens 1048576: the engine's pools do not fit in cpu memory (")
    assert message.endswith("; lower --max-total-tokens")


def test_an_engine_error_that_is_not_about_memory_is_not_hidden(monkeypatch):
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(startup, "build_feature_engine", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        build_engine(EngineConfig(), CanaryConfig(mode=CanaryMode.NONE))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_cuda_where_there_is_none():
    assert refused("--port", "0", "--device", "cuda").startswith("Error: --device cuda: no CUDA device is available")


def test_an_engine_setting_the_config_refuses():
    assert refused("--port", "0", "--model-mode", "dsv4", "--mem-backend", "sglang").startswith(
        "Error: EngineConfig.mem_backend = sglang runs model modes mha and swa"
    )
