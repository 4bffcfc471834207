"""The prefill engine: computes each prompt and its first token, then holds the KV for the transfer.

An ordinary engine whose requests ask for one token, except that finishing parks a request
instead of releasing it (as SGLang's prefill keeps a request's KV until its transfer completes):
its slots stay locked and unfreed until ``release`` after the transfer, which then caches the
prompt in the prefill engine's radix tree as finishing always does.
"""

from __future__ import annotations

from typing import Any

from mock_models.engine.engine import Engine
from mock_models.engine.kv_cache_manager import KVCacheManager
from mock_models.engine.request import Request


class ParkingKVCacheManager(KVCacheManager):
    def __init__(self, **kv_cache: Any) -> None:
        super().__init__(**kv_cache)
        self.parked: list[Request] = []  # prefilled, first token sampled, KV waiting to be transferred

    def finish(self, req: Request, *, overrun: bool = False) -> None:
        del overrun  # the prefill engine samples one token and schedules without overlap
        self.parked.append(req)

    def release(self, req: Request) -> None:
        """The transfer has read the request's KV: cache and free it as finishing does."""
        self.parked.remove(req)
        super().finish(req)


class PrefillEngine(Engine):
    kv_cache_class = ParkingKVCacheManager

    @property
    def parking(self) -> ParkingKVCacheManager:
        assert isinstance(self.kv_cache, ParkingKVCacheManager)  # kv_cache_class
        return self.kv_cache

    def abort(self, rid: str) -> bool:
        parked = next((req for req in self.parking.parked if req.rid == rid), None)
        if parked is not None:
            self.parking.release(parked)
            return True
        return super().abort(rid)
