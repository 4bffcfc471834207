"""What ``serve`` checks and opens before it serves: the device, the listening socket, the engine.

Each failure is a ``ServeError``: one line naming the flag, what was wrong and what to do, and
exit status 2 (bad input), instead of a traceback.
"""

from __future__ import annotations

import errno
import socket

import click
import torch

from kv_canary import CanaryConfig
from mock_models.config import EngineConfig
from mock_models.engine.engine import Engine

MAX_PORT = 65535


class ServeError(click.ClickException):
    """A setting ``serve`` cannot run with; click prints ``Error: <message>`` and exits 2."""

    exit_code = 2


def check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        build = "built without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no device visible"
        raise ServeError(
            f"--device cuda: no CUDA device is available (torch {torch.__version__}, {build}); use --device cpu"
        )


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), not yet listening; uvicorn listens on it."""
    if not 0 <= port <= MAX_PORT:
        raise ServeError(f"--port {port}: a TCP port is 0..{MAX_PORT} (0 picks a free one)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise ServeError(
            f"--host {host}: cannot be resolved ({error.strerror}); give an address such as 127.0.0.1 or 0.0.0.0"
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            # "address already in use" is what the harness looks for to retry with another free port.
            raise ServeError(
                f"--port {port}: address already in use on {host}; stop what listens there, or pick another port "
                "(--port 0 picks a free one)"
            ) from None
        if error.errno == errno.EADDRNOTAVAIL:
            raise ServeError(f"--host {host}: not an address of this machine; use 127.0.0.1 or 0.0.0.0") from None
        raise ServeError(f"--host {host} --port {port}: cannot listen there ({error.strerror})") from None
    sock.set_inheritable(True)
    return sock


def build_engine(config: EngineConfig, canary_config: CanaryConfig) -> Engine:
    try:
        return Engine(config, canary_config=canary_config)
    except (MemoryError, torch.OutOfMemoryError) as error:
        raise _does_not_fit(config, error) from None
    except RuntimeError as error:
        if "allocate" not in str(error):  # torch's CPU allocator reports a failed allocation as a RuntimeError
            raise
        raise _does_not_fit(config, error) from None


def _does_not_fit(config: EngineConfig, error: BaseException) -> ServeError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
    return ServeError(
        f"--max-total-tokens {config.max_total_tokens}: the engine's pools do not fit in {config.device} memory "
        f"({reason}); lower --max-total-tokens"
    )
