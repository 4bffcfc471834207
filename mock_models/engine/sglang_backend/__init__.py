"""The engine's memory on SGLang 0.5.23's real classes (``EngineConfig.mem_backend = "sglang"``).

Real SGLang objects do the work: ``ReqToTokenPool.req_to_token``, ``MHATokenToKVPool`` /
``SWAKVPool`` (K/V buffers and ``set_kv_buffer``), their allocators (free lists, ``alloc_extend``
and ``alloc_decode``, ``full_to_swa_index_mapping``), ``RadixCache``
(mha) and ``UnifiedRadixCache`` with FULL and SWA components (swa; its eviction frees through the
allocator). The thin classes here give them the interfaces of ``memory_protocols.py``, so the
rest of the engine does not change. Two things SGLang does not have are kept here:
``req_token_ids`` (the recorded-token table that turns on the canary's token checks) and the
per-node lock receipts ``UnifiedRadixCache.dec_lock_ref`` asks for.

* ``build``: ``build_sglang_memory``, the backend's entry point;
* ``pools``, ``request_rows``, ``allocators``, ``radix_cache``: one adapter family each;
* ``torchvision_stub``: what SGLang's imports need beside a CPU build of torch. Install it
  (``install_if_missing``) before importing any other module of this package.

Supported: modes mha and swa, any ``page_size``: ``TokenToKVPoolAllocator`` at 1,
``PagedTokenToKVPoolAllocator`` above it, and ``SWATokenToKVPoolAllocator`` in its token or paged
form (the paged form takes an SWA page with every fresh full page,
``EngineConfig.swa_pages_in_step``). SGLang's allocators do not detect double frees, so
``double_free_count`` stays 0 and ``strict_allocator`` has no effect.
"""

SGLANG_VERSION = "0.5.23"  # the release whose classes this backend adapts
