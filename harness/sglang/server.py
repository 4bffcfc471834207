"""A live SGLang 0.5.23 server for one (engine settings, mode): its command line and environment.

The scenario's engine settings map onto SGLang's flags (page size, pool size, prefill chunk,
running requests, seed) and the canary's ``KV_CANARY_*`` variables (mode, real-KV hash, sweep,
stats, SWA divergence). What the environment around the harness already holds passes through
(``tools/live_sglang/env.sh`` sets the stand-ins' paths there); added here:

* ``SGLANG_KV_CANARY_ENABLE_VERIFY_TOKEN_ASSERT=1``: SGLang's token snapshot, the token checks' source;
* ``SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND=python``: tree nodes the sweep reads tokens from and the
  injector can reach;
* ``SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_IDLE=0``: SGLang's own idle check raises on the slot
  accounting the faults break on purpose (a double free, freed node slots) and would stop the
  server; it warns instead;
* ``SGLANG_USE_CPU_ENGINE=1`` on ``--device cpu`` (SGLang's switch for its CPU engine);
* the fault injector's port and the run's token.

On the CPU, mode swa sizes the SWA pool like the full one (``--swa-full-tokens-ratio 1``): SGLang's
torch-native backend reads SWA layers at full-pool slots, see ``server_argv``. The server always
runs with ``--disable-overlap-schedule`` (faults land between forwards) and
``--skip-tokenizer-init`` (requests carry ``input_ids``); CUDA graphs are on or off per target.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from harness.scenario.model import EngineSettings
from sglang_faults.settings import LOOPBACK, PORT_VARIABLE, TOKEN_VARIABLE

READY_LINE = "The server is fired up and ready to roll!"
CUDA_GRAPH_MAX_DECODE_BATCH = 8
CUDA_GRAPH_MAX_PREFILL_TOKENS = 256


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SglangLaunch:
    device: str = "cuda"  # "cpu": SGLang's CPU engine with the torch-native attention backend
    cuda_graphs: bool = False
    python: str = sys.executable

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"SglangLaunch.device={self.device!r}: use cpu or cuda")
        if self.device == "cpu" and self.cuda_graphs:
            raise ValueError("SglangLaunch: CUDA graphs need device cuda")

    @property
    def label(self) -> str:
        return f"sglang-{self.device}-graphs-{'on' if self.cuda_graphs else 'off'}"


def server_argv(launch: SglangLaunch, engine: EngineSettings, *, mode: str, model_dir: Path, port: int) -> list[str]:
    argv = [
        launch.python,
        "-m",
        "sglang.launch_server",
        "--model-path",
        str(model_dir),
        "--load-format",
        "dummy",
        "--skip-tokenizer-init",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--tp",
        "1",
        "--page-size",
        str(engine.page_size),
        "--max-total-tokens",
        str(engine.max_total_tokens),
        "--disable-overlap-schedule",
        "--sampling-backend",
        "pytorch",
    ]
    if launch.device == "cpu":
        argv += ["--device", "cpu", "--attention-backend", "torch_native", "--disable-cuda-graph"]
        if mode == "swa":
            # SGLang 0.5.23's torch-native backend writes SWA layers at translated slots but reads
            # them at full-pool slots (_run_sdpa_forward_extend indexes the SWA buffer with
            # req_to_token); an SWA pool smaller than the full one is then indexed past its end.
            argv += ["--swa-full-tokens-ratio", "1"]
    else:
        argv += ["--attention-backend", "triton", "--mem-fraction-static", "0.5"]
        if launch.cuda_graphs:
            argv += [
                "--cuda-graph-max-bs-decode",
                str(CUDA_GRAPH_MAX_DECODE_BATCH),
                "--cuda-graph-max-bs-prefill",
                str(CUDA_GRAPH_MAX_PREFILL_TOKENS),
            ]
        else:
            argv += ["--disable-cuda-graph"]
    optional = {
        "--chunked-prefill-size": engine.chunked_prefill_size,
        "--max-running-requests": engine.max_running_requests,
        "--random-seed": engine.seed,
    }
    for flag, value in optional.items():
        if value is not None:
            argv += [flag, str(value)]
    return argv


def server_env(
    launch: SglangLaunch,
    engine: EngineSettings,
    *,
    injector_port: int,
    token: str,
    swa_divergence_interval: int | None,
) -> dict[str, str]:
    canary = {
        "KV_CANARY_MODE": engine.canary_mode,
        "KV_CANARY_REAL_KV_HASH": engine.real_kv,
        "KV_CANARY_SWEEP_INTERVAL": str(engine.sweep_interval),
    }
    if engine.stats_interval is not None:
        canary["KV_CANARY_STATS_INTERVAL"] = str(engine.stats_interval)
    if swa_divergence_interval is not None:
        canary["KV_CANARY_SWA_DIVERGENCE_INTERVAL"] = str(swa_divergence_interval)
    env = {
        **canary,
        "SGLANG_KV_CANARY_ENABLE_VERIFY_TOKEN_ASSERT": "1",
        "SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND": "python",
        "SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_IDLE": "0",
        PORT_VARIABLE: str(injector_port),
        TOKEN_VARIABLE: token,
    }
    if launch.device == "cpu":
        env["SGLANG_USE_CPU_ENGINE"] = "1"
    return env
