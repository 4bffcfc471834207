"""The canary inside a real SGLang (0.5.23) server: install it into a ``ModelRunner`` and let the
sweep walk the scheduler's radix cache. See docs/SGLANG.md."""

from kv_canary.integrations.sglang.model_runner import KvCanaryInstallError, install_into_model_runner
from kv_canary.integrations.sglang.node_view import SglangNodeView
from kv_canary.integrations.sglang.tree_cache import SglangTreeCache, attach_tree_cache

__all__ = [
    "KvCanaryInstallError",
    "SglangNodeView",
    "SglangTreeCache",
    "attach_tree_cache",
    "install_into_model_runner",
]
