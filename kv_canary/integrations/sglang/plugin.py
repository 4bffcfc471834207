"""The canary as an SGLang 0.5.23 plugin: the ``sglang.srt.plugins`` entry point ``kv_canary``.

SGLang calls ``load_plugins()`` at the start of every server process (``run_scheduler_process``
among them), runs each entry point of the group, then applies the hooks they registered with its
``HookRegistry``. ``register`` registers nothing unless ``KV_CANARY_MODE`` is set to ``log`` or
``raise``: installed beside SGLang and left unset, the plugin does not touch the server. Set, it
registers three hooks, which act in the scheduler process:

* around ``Scheduler.init_all_cuda_graphs``: install the canary into the target model runner
  before any graph is captured (the pools exist by then; ``install_into_model_runner``);
* after ``Scheduler.__init__``: attach the scheduler's radix cache for the sweep (the tree cache
  is built after the graphs are captured, so it cannot be attached at install), and restart the
  canary's step count, so that steps count served forwards, not the start-up's warm-up and
  capture forwards;
* around ``ModelRunner.forward``: before the forward, copy the batch's token snapshot into the
  canary's token table; after it, run the canary's host step (ring drain, sweep, stats, health).
  ``ModelRunner.forward`` runs for every forward, the CUDA-graph replays included, which never
  reach the wrapped ``model.forward``.

Settings are the ``KV_CANARY_*`` variables (``CanaryConfig.from_env``), read once, at ``register``.
The token checks need ``SGLANG_KV_CANARY_ENABLE_VERIFY_TOKEN_ASSERT=1`` (SGLang then puts each
request's tokens on its forward batch); SGLang's own canary must stay off.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch

from kv_canary.config import ENV_PREFIX, CanaryConfig
from kv_canary.integrations.sglang.model_runner import install_into_model_runner
from kv_canary.integrations.sglang.token_table import TOKEN_SNAPSHOT_VARIABLE, RequestTokenTable
from kv_canary.integrations.sglang.tree_cache import attach_tree_cache
from kv_canary.manager import CanaryManager

logger = logging.getLogger("kv_canary")

MODE_VARIABLE = ENV_PREFIX + "MODE"
_SCHEDULER = "sglang.srt.managers.scheduler.Scheduler"
_MODEL_RUNNER = "sglang.srt.model_executor.model_runner.ModelRunner"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ServerCanary:
    """The canary installed on one model runner."""

    manager: CanaryManager
    tokens: RequestTokenTable


# One entry per model runner the canary guards (the target runner; draft runners are not guarded).
_INSTALLED: weakref.WeakKeyDictionary[object, ServerCanary] = weakref.WeakKeyDictionary()


def installed_canary(model_runner: object) -> ServerCanary | None:
    """The canary guarding ``model_runner``, if the plugin installed one."""
    return _INSTALLED.get(model_runner)


def plugin_config(environ: Mapping[str, str] | None = None) -> CanaryConfig | None:
    """The config to install with, or None: the plugin stays out unless ``KV_CANARY_MODE`` turns it on."""
    environ = os.environ if environ is None else environ
    if environ.get(MODE_VARIABLE, "").strip().lower() in ("", "none"):
        return None
    return CanaryConfig.from_env(environ)


def register() -> None:
    """The entry point SGLang's ``load_plugins`` calls in each server process."""
    config = plugin_config()
    if config is None:
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(f"{_SCHEDULER}.init_all_cuda_graphs", _install_before_capture(config), HookType.AROUND)
    HookRegistry.register(f"{_SCHEDULER}.__init__", _attach_tree_cache, HookType.AFTER)
    HookRegistry.register(f"{_MODEL_RUNNER}.forward", _forward_with_host_step, HookType.AROUND)


def _install_before_capture(config: CanaryConfig) -> Callable[..., Any]:
    def init_all_cuda_graphs(original: Callable[..., Any], scheduler: Any, *args: Any, **kwargs: Any) -> Any:
        model_runner = scheduler.tp_worker.model_runner
        tokens = RequestTokenTable(model_runner.req_to_token_pool.req_to_token)
        manager = install_into_model_runner(model_runner, config, token_table=tokens, engine_runs_host_step=True)
        if manager is not None:
            _INSTALLED[model_runner] = ServerCanary(manager=manager, tokens=tokens)
            logger.info(
                "kv_canary: installed on %s (mode %s, real_kv_hash %s, sweep every %d forwards, groups %s); "
                "token checks %s",
                type(model_runner.token_to_kv_pool).__name__,
                config.mode.value,
                config.real_kv_hash.value,
                config.sweep_interval,
                ", ".join(group.kind.value for group in manager.groups),
                "on" if os.environ.get(TOKEN_SNAPSHOT_VARIABLE) == "1" else f"off ({TOKEN_SNAPSHOT_VARIABLE} is not 1)",
            )
        return original(scheduler, *args, **kwargs)

    return init_all_cuda_graphs


def _attach_tree_cache(_result: Any, scheduler: Any, *args: Any, **kwargs: Any) -> None:
    canary = installed_canary(scheduler.tp_worker.model_runner)
    if canary is not None:
        attach_tree_cache(canary.manager, scheduler.tree_cache)
        canary.manager.restart_step_count()
        logger.info("kv_canary: sweep attached to %s; counting forwards from here", type(scheduler.tree_cache).__name__)


def _forward_with_host_step(
    original: Callable[..., Any], model_runner: Any, forward_batch: Any, *args: Any, **kwargs: Any
) -> Any:
    canary = installed_canary(model_runner)
    if canary is None or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
        return original(model_runner, forward_batch, *args, **kwargs)
    canary.tokens.update(forward_batch)
    output = original(model_runner, forward_batch, *args, **kwargs)
    canary.manager.after_forward_on_host()
    return output
