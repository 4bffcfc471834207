"""SGLang 0.5.23's real classes, imported once for the tests in this folder.

Importing this module skips the importing test module when SGLang is not installed (run
.ci/install-sglang); with SGLang installed, any import error fails the tests instead.
"""

import importlib.util

import pytest

SGLANG_VERSION = "0.5.23"

if importlib.util.find_spec("sglang") is None:
    pytest.skip(
        f"sglang {SGLANG_VERSION} is not installed: run .ci/install-sglang (see docs/SGLANG.md)",
        allow_module_level=True,
    )

from mock_models.engine.sglang_backend.torchvision_stub import install_if_missing  # noqa: E402

install_if_missing()

import sglang  # noqa: E402
from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator  # noqa: E402
from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator  # noqa: E402
from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams, MatchPrefixParams  # noqa: E402
from sglang.srt.mem_cache.cache_init_params import CacheInitParams  # noqa: E402
from sglang.srt.mem_cache.memory_pool import KVWriteLoc, MHATokenToKVPool, ReqToTokenPool  # noqa: E402
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey  # noqa: E402
from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool  # noqa: E402
from sglang.srt.mem_cache.unified_cache.components import ComponentType  # noqa: E402
from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache  # noqa: E402
from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode  # noqa: E402

assert sglang.__version__ == SGLANG_VERSION, f"these tests pin sglang {SGLANG_VERSION}, found {sglang.__version__}"

__all__ = [
    "CacheInitParams",
    "ComponentType",
    "EvictParams",
    "ForwardBatch",
    "ForwardMode",
    "InsertParams",
    "KVWriteLoc",
    "MHATokenToKVPool",
    "MatchPrefixParams",
    "RadixCache",
    "RadixKey",
    "ReqToTokenPool",
    "SWAKVPool",
    "SWATokenToKVPoolAllocator",
    "TokenToKVPoolAllocator",
    "UnifiedRadixCache",
]
