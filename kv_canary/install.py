"""``install_canary``: attach canary buffers to an engine's KV pool and wrap its model's forward."""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

import torch

from kv_canary.adapters import attach_canary_buffers
from kv_canary.config import CanaryConfig
from kv_canary.engine_protocols import ReqToTokenRows
from kv_canary.errors import CanaryAlreadyInstalledError
from kv_canary.forward_rows import ForwardRowsExtractor, SglangForwardRows
from kv_canary.manager import CanaryManager
from kv_canary.observers.defaults import build_default_observers

LOGGER_NAME = "kv_canary"
# Set on the model and the KV pool an install guards, to refuse a second one.
_INSTALLED_ATTRIBUTE = "_kv_canary_manager"


def install_canary(
    *,
    model: torch.nn.Module,
    kv_pool: object,
    req_to_token_pool: ReqToTokenRows,
    config: CanaryConfig,
    swa_window: int | None = None,
    forward_rows: ForwardRowsExtractor | None = None,
    logger: logging.Logger | None = None,
    engine_runs_host_step: bool = False,
    rank: int | None = None,
) -> CanaryManager | None:
    """Guard ``kv_pool``: every outermost ``model.forward`` call runs the canary around it.

    Returns None when ``config.mode`` is ``none``. ``swa_window`` is required for pools with a
    sliding-window sub-pool. ``forward_rows`` reads each forward's batch; the default reads
    SGLang's ``ForwardBatch`` against ``req_to_token_pool``. Call
    ``manager.attach_prefix_cache(radix_cache)`` to enable the sweep.

    The host step (``manager.after_forward_on_host``: ring drain, sweep, stats) runs after each
    eager ``model.forward`` unless ``engine_runs_host_step``: an engine that replays CUDA graphs
    never calls ``model.forward`` for a replayed forward, so it must call the host step itself
    once per forward, replayed or not.

    An engine running several ranks (tensor or pipeline parallel) installs one canary per rank, on
    that rank's shard of the pool, and passes ``rank``: its violation lines then name it.
    """
    if not config.enabled:
        return None
    for guarded, what in ((model, "model"), (kv_pool, "KV pool")):
        if getattr(guarded, _INSTALLED_ATTRIBUTE, None) is not None:
            raise CanaryAlreadyInstalledError(
                f"kv_canary is already installed on this {what} ({type(guarded).__name__}); a second install "
                "would wrap the forward and write every record twice. Install once per model runner, on the "
                "target model (a speculative draft worker's runner gets none)"
            )
    groups = attach_canary_buffers(kv_pool, config=config, swa_window=swa_window)
    device = next(iter(groups[0].halves.values())).head.device
    manager = CanaryManager(
        config=config,
        groups=groups,
        device=device,
        logger=logger or logging.getLogger(LOGGER_NAME),
        req_to_token_pool=req_to_token_pool,
        rank=rank,
    )
    manager.observers.extend(build_default_observers(manager))
    for guarded in (model, kv_pool):
        setattr(guarded, _INSTALLED_ATTRIBUTE, manager)
    _wrap_forward(
        model,
        manager,
        forward_rows or SglangForwardRows(req_to_token_pool=req_to_token_pool),
        host_step=not engine_runs_host_step,
    )
    return manager


def _wrap_forward(
    model: torch.nn.Module, manager: CanaryManager, forward_rows: ForwardRowsExtractor, *, host_step: bool
) -> None:
    original = model.forward
    nesting = threading.local()

    @functools.wraps(original)
    def forward_with_canary(*args: Any, **kwargs: Any) -> Any:
        # Models may call their own forward (draft heads, sub-modules sharing the method): only
        # the outermost call is a forward of the engine, so only it is bracketed.
        if getattr(nesting, "depth", 0):
            return original(*args, **kwargs)
        nesting.depth = 1
        try:
            capturing = manager.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
            manager.before_forward(forward_rows(args, kwargs, capturing=capturing))
            output = original(*args, **kwargs)
            manager.after_forward()
            if host_step and not capturing:
                manager.after_forward_on_host()
            return output
        finally:
            nesting.depth = 0

    model.forward = forward_with_canary
