"""The live SGLang server as the runner's target (``kv-canary run --target sglang``)."""

from __future__ import annotations

import dataclasses
import os
import secrets
from pathlib import Path
from typing import Any

from harness.runner.errors import RunnerError
from harness.runner.ports import free_port
from harness.runner.server_process import ServerProcess
from harness.scenario.model import EngineSettings
from harness.sglang.client import LiveSglangClient
from harness.sglang.injector_entry_point import write_entry_point
from harness.sglang.model_configs import LIVE_MODES, write_model
from harness.sglang.server import READY_LINE, SglangLaunch, server_argv, server_env
from sglang_faults.settings import LOOPBACK

STARTUP_TIMEOUT_S = 420.0  # SGLang's own start-up: about a minute on a GPU machine, more on a busy CPU
STOP_TIMEOUT_S = 20.0


class LiveServerProcess(ServerProcess):
    """A ``ServerProcess`` that also knows where its fault injector listens and the run's token."""

    def __init__(self, *, injector_port: int, token: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.injector_url = f"http://{LOOPBACK}:{injector_port}"
        self.token = token


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SglangTarget:
    launch: SglangLaunch

    @property
    def label(self) -> str:
        return self.launch.label

    @property
    def samples_with_token_oracle(self) -> bool:
        # A real model samples its own tokens and reports no per-output digests: outputs are not judged,
        # and no clean twin is run (docs/HARNESS.md, "Did it detect before harm?").
        return False

    def server(
        self, engine: EngineSettings, mode: str, *, log_path: Path, swa_divergence_interval: int | None
    ) -> LiveServerProcess:
        if mode not in LIVE_MODES:
            raise RunnerError(
                f"mode {mode} has no live SGLang model here; the live target runs {', '.join(LIVE_MODES)}"
            )
        if engine.page_size != 1:
            raise RunnerError(f"engine.page_size {engine.page_size}: the live target runs page_size 1 only")
        model_dir = write_model(log_path.with_suffix(".model"), mode, swa_window=engine.swa_window)
        token, injector_port = secrets.token_hex(32), free_port(LOOPBACK)
        plugins = write_entry_point(log_path.with_suffix(".plugins"))
        env = server_env(
            self.launch,
            engine,
            injector_port=injector_port,
            token=token,
            swa_divergence_interval=swa_divergence_interval,
        )
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))
        return LiveServerProcess(
            argv_for_port=lambda port: server_argv(self.launch, engine, mode=mode, model_dir=model_dir, port=port),
            log_path=log_path,
            startup_timeout_s=STARTUP_TIMEOUT_S,
            stop_timeout_s=STOP_TIMEOUT_S,
            ready_line=READY_LINE,
            env=env,
            injector_port=injector_port,
            token=token,
        )

    def client(self, server: ServerProcess, *, timeout_s: float) -> LiveSglangClient:
        if not isinstance(server, LiveServerProcess):
            raise TypeError(f"the live target drives the servers its server() starts, not {type(server).__name__}")
        return LiveSglangClient(
            sglang_url=server.base_url, injector_url=server.injector_url, token=server.token, timeout_s=timeout_s
        )
