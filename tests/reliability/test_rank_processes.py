"""The ranks of a multi-rank mock server live and die with it: a signal to the server process
alone (not its process group) stops its rank processes too, whether it shuts down cleanly or is
killed outright. Real processes: the server, its rank 1, signals from outside."""

from __future__ import annotations

import os
import signal
import time

import pytest
import requests

from harness.runner import ServerProcess
from harness.runner.server_command import DEFAULT_SERVER_COMMAND
from tests.reliability.process_checks import process_alive

GONE_WITHIN_S = 15.0


def _rank_pids(server: ServerProcess) -> list[int]:
    info = requests.get(f"{server.base_url}/get_server_info", timeout=30).json()
    assert (info["tp"], info["pp"]) == (2, 1)
    return info["rank_pids"]


def _wait_gone(pids: list[int]) -> list[int]:
    deadline = time.monotonic() + GONE_WITHIN_S
    while time.monotonic() < deadline and any(process_alive(pid) for pid in pids):
        time.sleep(0.2)
    return [pid for pid in pids if process_alive(pid)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_signal_to_the_server_alone_takes_its_ranks_with_it(tmp_path, signum):
    server = ServerProcess(
        argv_for_port=lambda port: [*DEFAULT_SERVER_COMMAND, "--port", str(port), "--tp", "2"],
        log_path=tmp_path / "server.log",
        startup_timeout_s=180,
    )
    with server:
        ranks = _rank_pids(server)
        assert len(ranks) == 1 and process_alive(ranks[0])
        answer = requests.post(
            f"{server.base_url}/generate",
            json={"input_ids": [1, 2, 3, 4], "sampling_params": {"max_new_tokens": 4}},
            timeout=60,
        )
        assert answer.status_code == 200 and len(answer.json()["output_ids"]) == 4
        assert server.pid is not None
        os.kill(server.pid, signum)  # the server's pid, not its group: the ranks must follow by themselves
        assert _wait_gone([server.pid, *ranks]) == [], server.log_text()[-3000:]
