"""SGLang's real classes, imported once for the tests in this folder.

The folder's conftest.py has skipped it where SGLang is not installed and stubbed torchvision
where it is; any import error here fails the tests.
"""

import sglang
from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator
from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams, MatchPrefixParams
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.memory_pool import KVWriteLoc, MHATokenToKVPool, ReqToTokenPool
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey
from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool
from sglang.srt.mem_cache.unified_cache.components import ComponentType
from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache
from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode

from mock_models.engine.sglang_backend import SGLANG_VERSION

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
