"""The mock server's command line for one (engine settings, model mode)."""

from __future__ import annotations

import sys

from kv_canary_contract import EngineSettings, setting_argument, setting_flag

DEFAULT_SERVER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "mock_models.server")


def server_argv(
    *,
    server_command: tuple[str, ...],
    engine: EngineSettings,
    mode: str,
    port: int,
    device: str,
    swa_divergence_interval: int | None,
) -> list[str]:
    """Every engine setting as its flag, in the order ``EngineSettings`` declares them; an optional
    one left ``None`` (or an empty list) is not passed, so the server's default applies. ``swa_divergence_interval`` is
    the effective one (see ``effective_swa_divergence_interval``)."""
    argv = [*server_command, "--model-mode", mode, "--port", str(port), "--device", device]
    settings = engine.model_dump() | {"swa_divergence_interval": swa_divergence_interval}
    for name, value in settings.items():
        argument = setting_argument(value)
        if argument is not None:
            argv += [setting_flag(name), argument]
    return argv


def effective_swa_divergence_interval(engine: EngineSettings, *, expects_swa_divergence: bool) -> int | None:
    # An SWA divergence expectation is checked on the last divergence line, so the reporter must
    # be on; every forward is the cheapest choice that cannot miss the end of a short run.
    if engine.swa_divergence_interval is not None:
        return engine.swa_divergence_interval
    return 1 if expects_swa_divergence else None
