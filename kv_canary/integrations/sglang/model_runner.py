"""``install_into_model_runner``: the canary on a real SGLang (0.5.23) ``ModelRunner``.

What it reads from the runner (all set once ``init_memory_pool`` has run):

* ``model``: its ``forward(input_ids, positions, forward_batch, **kwargs)`` gets wrapped;
* ``token_to_kv_pool``: ``MHATokenToKVPool``, ``SWAKVPool`` or ``DeepSeekV4TokenToKVPool``
  (adapters are picked by class name along the MRO);
* ``req_to_token_pool``: ``ReqToTokenPool.req_to_token``, each request row's slot per position;
* ``token_to_kv_pool_allocator``: for hybrid pools, its ``full_to_swa_index_mapping`` must be
  the tensor the pool registered (the canary translates through the pool's);
* ``sliding_window_size`` (or the DSv4 pool's ``sliding_window``): the SWA layers' window.

Install before the runner captures CUDA graphs (``ModelRunner.init_cuda_graphs``, called from
``Scheduler.init_all_cuda_graphs``): a captured graph replays the forward it recorded without
calling ``model.forward``, so a canary installed afterwards would never run on graph-replayed
decodes and would then report every slot they wrote.
"""

from __future__ import annotations

import logging
from typing import Any

from kv_canary.config import CanaryConfig
from kv_canary.errors import KvCanaryError
from kv_canary.forward_rows import SglangForwardRows
from kv_canary.install import install_canary
from kv_canary.integrations.sglang.token_table import RequestTokenTable
from kv_canary.integrations.sglang.tree_cache import attach_tree_cache
from kv_canary.manager import CanaryManager


class KvCanaryInstallError(KvCanaryError, RuntimeError):
    """The model runner is not in a state the canary can be installed into; the message says why."""


def install_into_model_runner(
    model_runner: object,
    config: CanaryConfig | None = None,
    *,
    tree_cache: object | None = None,
    logger: logging.Logger | None = None,
    token_table: RequestTokenTable | None = None,
    engine_runs_host_step: bool = False,
) -> CanaryManager | None:
    """Guard the runner's KV pool; returns the manager, or None when the canary is off.

    ``config`` defaults to ``CanaryConfig.from_env()`` (``KV_CANARY_*`` variables). Pass the
    scheduler's ``tree_cache`` (or call ``attach_tree_cache`` later) to enable the radix sweep.
    ``token_table`` turns the token checks on (its rows are what the checks expect); with
    ``engine_runs_host_step`` the caller runs ``manager.after_forward_on_host()`` once per forward
    (``install_canary``; the SGLang plugin does, from ``ModelRunner.forward``).
    """
    config = CanaryConfig.from_env() if config is None else config
    if not config.enabled:
        return None
    _require_no_captured_graphs(model_runner)
    _require_sglang_canary_off(model_runner)
    pool = _required(model_runner, "token_to_kv_pool")
    req_to_token_pool = _required(model_runner, "req_to_token_pool")
    _require_shared_swa_mapping(pool, getattr(model_runner, "token_to_kv_pool_allocator", None))
    manager = install_canary(
        model=_required(model_runner, "model"),
        kv_pool=pool,
        req_to_token_pool=req_to_token_pool,
        config=config,
        swa_window=_swa_window(model_runner, pool),
        forward_rows=SglangForwardRows(
            req_to_token_pool=req_to_token_pool,
            req_token_ids=token_table.req_token_ids if token_table is not None else None,
        ),
        logger=logger,
        engine_runs_host_step=engine_runs_host_step,
    )
    if tree_cache is not None and manager is not None:
        attach_tree_cache(manager, tree_cache)
    return manager


def _required(model_runner: object, name: str) -> Any:
    value = getattr(model_runner, name, None)
    if value is None:
        raise KvCanaryInstallError(
            f"kv_canary: model_runner.{name} is not set; install the canary after ModelRunner.init_memory_pool has run"
        )
    return value


def _require_no_captured_graphs(model_runner: object) -> None:
    eager = getattr(model_runner, "eager_runner", None)
    captured = [
        name
        for name in ("decode_cuda_graph_runner", "prefill_cuda_graph_runner")
        if getattr(model_runner, name, None) not in (None, eager)
    ]
    if captured:
        raise KvCanaryInstallError(
            f"kv_canary: the model runner has captured CUDA graphs already ({', '.join(captured)}); graph replays "
            "skip model.forward, so install the canary before ModelRunner.init_cuda_graphs (e.g. at the start "
            "of Scheduler.init_all_cuda_graphs) or run the server with --disable-cuda-graph"
        )


def _require_sglang_canary_off(model_runner: object) -> None:
    if getattr(model_runner, "canary_manager", None) is not None:
        raise KvCanaryInstallError(
            "kv_canary: SGLang's own KV canary is installed on this model runner (server args kv_canary); "
            "two canaries would wrap the same pool and forward. Turn SGLang's off or leave KV_CANARY_MODE unset"
        )


def _require_shared_swa_mapping(pool: object, allocator: object | None) -> None:
    allocator_mapping = getattr(allocator, "full_to_swa_index_mapping", None)
    if allocator_mapping is None or not hasattr(pool, "full_to_swa_index_mapping"):
        return
    if pool.full_to_swa_index_mapping is not allocator_mapping:
        raise KvCanaryInstallError(
            f"kv_canary: {type(pool).__name__}.full_to_swa_index_mapping is not the tensor "
            f"{type(allocator).__name__} maintains; the canary would translate through a stale map. Install "
            "after the allocator has registered its mapping with the pool (register_mapping)"
        )


def _swa_window(model_runner: object, pool: object) -> int | None:
    window = getattr(model_runner, "sliding_window_size", None)
    return window if window is not None else getattr(pool, "sliding_window", None)
