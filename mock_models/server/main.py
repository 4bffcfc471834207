"""``serve_command``: the click command that launches the mock server.

Mounted by the harness as ``kv-canary serve``; also ``python -m mock_models.server``. The engine
settings' flags are generated from the contract (``flags.py``); canary settings not given as flags
come from ``CanaryConfig.from_env()`` (``KV_CANARY_*``), read once here; flags win. Prints
``kv_canary_server listening on http://HOST:PORT`` to stderr once the socket accepts connections
(with ``--port 0`` the port is picked here). Mounts the fault injector's ``/kv_canary/inject`` and
``/kv_canary/injections`` (``mock_models/faults``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import types
from collections.abc import Iterator

import click
import torch
import uvicorn

from kv_canary_contract import MODEL_MODES
from mock_models.config import MemBackend
from mock_models.faults import FaultInjector
from mock_models.server.app import create_app
from mock_models.server.engine_worker import EngineWorker
from mock_models.server.fault_routes import build_fault_router
from mock_models.server.flags import build_configs, engine_setting_options
from mock_models.server.startup import ServeError, bind, build_engine, check_device

logger = logging.getLogger("mock_models.server")

READY_LINE = "kv_canary_server listening on http://{host}:{port}"
# After SIGTERM/SIGINT the engine thread has this long to finish its forward and stop; one that
# does not is stuck, and the process exits without it (status EXIT_ENGINE_STUCK).
ENGINE_STOP_GRACE_S = 5.0
EXIT_ENGINE_STUCK = 1


class _Server(uvicorn.Server):
    """uvicorn, plus: the ready line, and a signal that first stops the engine (pending requests
    get 503 at once) and ends in a clean exit instead of uvicorn's re-raised signal; if the engine
    thread is stuck and does not stop, the process exits without it."""

    def __init__(self, config: uvicorn.Config, *, worker: EngineWorker, host: str, port: int) -> None:
        super().__init__(config)
        self._worker, self._host, self._port = worker, host, port
        self._watchdog: threading.Thread | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(READY_LINE.format(host=self._host, port=self._port), file=sys.stderr, flush=True)

    def handle_exit(self, sig: int, frame: types.FrameType | None) -> None:
        self._worker.request_stop()
        super().handle_exit(sig, frame)
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._exit_if_the_engine_hangs, name="stop-watchdog", daemon=True)
            self._watchdog.start()
        # Logged last: a busy engine thread may hold the log handler's lock for a long while.
        logger.info("signal %s: stopping the engine, then the server", signal.Signals(sig).name)

    def _exit_if_the_engine_hangs(self) -> None:
        if self._worker.join(ENGINE_STOP_GRACE_S):
            return
        # os.write and os._exit: no lock the stuck thread could hold (logging's, stderr's) is needed.
        os.write(
            sys.stderr.fileno(),
            f"kv_canary_server: the engine thread did not stop within {ENGINE_STOP_GRACE_S:.0f} s of the "
            f"signal (it is {self._worker.activity() or 'busy'}); exiting without it\n".encode(),
        )
        os._exit(EXIT_ENGINE_STUCK)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@click.command("serve")
@click.option("--model-mode", type=click.Choice(MODEL_MODES), default="mha", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=30000, show_default=True, help="0 = pick a free port")
@click.option(
    "--mem-backend",
    type=click.Choice([backend.value for backend in MemBackend]),
    default=MemBackend.MOCK.value,
    show_default=True,
    help="sglang: SGLang 0.5.23's real pools, paged allocators and radix caches (mha, swa; any page size)",
)
@engine_setting_options
def serve_command(model_mode: str, device: str, host: str, port: int, mem_backend: str, **settings: object) -> None:
    """Serve a mock model over HTTP (SGLang-compatible /generate), with the KV canary."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_device(device)
    if device == "cpu":
        torch.set_num_threads(1)  # the model's ops are tiny: extra threads only add hand-off cost
    try:
        config, canary_config = build_configs(
            model_mode=model_mode, device=device, mem_backend=mem_backend, settings=settings
        )
    except ValueError as error:
        raise ServeError(str(error)) from None
    sock = bind(host, port)
    engine = build_engine(config, canary_config)
    fault_router = build_fault_router(FaultInjector.install(engine))
    worker = EngineWorker(engine)
    bound_port = sock.getsockname()[1]
    logger.info("engine ready: %s, canary mode %s", config, canary_config.mode.value)
    app = create_app(worker, extra_routers=[fault_router])
    uvicorn_config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=10)
    _Server(uvicorn_config, worker=worker, host=host, port=bound_port).run(sockets=[sock])
