"""A free TCP port for a server we are about to start."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    # The OS picks an unused ephemeral port; there is a window between closing it here and the
    # server binding it, which ``ServerProcess`` covers by retrying on "address in use".
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port
