"""The mock server's command line for one (engine settings, model mode)."""

from __future__ import annotations

import sys

from harness.scenario.model import EngineSettings

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
    """``swa_divergence_interval`` is the effective one (see ``effective_swa_divergence_interval``)."""
    argv = [
        *server_command,
        "--model-mode",
        mode,
        "--port",
        str(port),
        "--device",
        device,
        "--page-size",
        str(engine.page_size),
        "--max-total-tokens",
        str(engine.max_total_tokens),
        "--swa-window",
        str(engine.swa_window),
        "--sweep-interval",
        str(engine.sweep_interval),
        "--real-kv",
        engine.real_kv,
        "--canary-mode",
        engine.canary_mode,
    ]
    optional = {
        "--max-running-requests": engine.max_running_requests,
        "--chunked-prefill-size": engine.chunked_prefill_size,
        "--seed": engine.seed,
        "--stats-interval": engine.stats_interval,
        "--swa-divergence-interval": swa_divergence_interval,
    }
    for flag, value in optional.items():
        if value is not None:
            argv += [flag, str(value)]
    return argv


def effective_swa_divergence_interval(engine: EngineSettings, *, expects_swa_divergence: bool) -> int | None:
    # An SWA divergence expectation is checked on the last divergence line, so the reporter must
    # be on; every forward is the cheapest choice that cannot miss the end of a short run.
    if engine.swa_divergence_interval is not None:
        return engine.swa_divergence_interval
    return 1 if expects_swa_divergence else None
