"""A hybrid SWA engine for the canary's unit tests: full-attention layers in a full pool,
sliding-window layers in a smaller SWA sub-pool reached through ``full_to_swa_index_mapping``.

Every new token gets a full slot and an SWA slot; after each forward the SWA slots of positions
that slid out of a request's window go back to the SWA free list (their map entries become 0)
and are handed out again later, as an SGLang-style SWA allocator does.
"""

from __future__ import annotations

from typing import Any

import torch

from kv_canary import CanaryConfig
from tests.unit.canary.fake_engine import FakeEngine, ForwardBatch, Request, TinyModel


class LayerBuffers:
    def __init__(self, *, num_slots: int, num_layers: int, heads: int = 2, head_dim: int = 4) -> None:
        self.k_buffer = [torch.zeros(num_slots, heads, head_dim) for _ in range(num_layers)]
        self.v_buffer = [torch.zeros(num_slots, heads, head_dim) for _ in range(num_layers)]


def buf_infos(buffers: list[torch.Tensor], page_size: int) -> tuple[list[int], list[int], list[int]]:
    return ([b.data_ptr() for b in buffers], [b.nbytes for b in buffers], [b[0].nbytes * page_size for b in buffers])


class SWAKVPool:  # named like SGLang's hybrid pool: the canary picks its adapter by class name
    def __init__(self, *, num_full_slots: int, num_swa_slots: int) -> None:
        self.page_size = 1
        self.full_kv_pool = LayerBuffers(num_slots=num_full_slots, num_layers=1)
        self.swa_kv_pool = LayerBuffers(num_slots=num_swa_slots, num_layers=2)
        # One spare entry past the last full slot, as SGLang sizes it; 0 = not resident.
        self.full_to_swa_index_mapping = torch.zeros(num_full_slots + 1, dtype=torch.int64)

    def get_contiguous_buf_infos(self):
        return buf_infos(self.full_kv_pool.k_buffer + self.full_kv_pool.v_buffer, self.page_size)

    def get_state_buf_infos(self):
        return buf_infos(self.swa_kv_pool.k_buffer + self.swa_kv_pool.v_buffer, self.page_size)


class SwaTinyModel(TinyModel):
    """Writes the full layers at ``out_cache_loc`` and the window layers at their SWA slots."""

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch) -> None:
        self.calls += 1
        base = (input_ids * 31 + positions).to(torch.float32)[:, None, None]
        full_slots = forward_batch.out_cache_loc
        swa_slots = self.pool.full_to_swa_index_mapping[full_slots]
        for pool, slots, salt in ((self.pool.full_kv_pool, full_slots, 0), (self.pool.swa_kv_pool, swa_slots, 10)):
            for layer, (k, v) in enumerate(zip(pool.k_buffer, pool.v_buffer, strict=True)):
                k[slots] = base + salt + layer + torch.arange(k[0].numel()).view(k[0].shape)
                v[slots] = -base - salt - layer


class FakeSwaEngine(FakeEngine):
    """``pool`` and ``model_class`` swap in another pool with an SWA sub-pool (a DSv4-style one)."""

    def __init__(
        self,
        config: CanaryConfig,
        *,
        window: int = 4,
        num_swa_slots: int = 48,
        num_slots: int = 256,
        pool: Any = None,
        model_class: type[TinyModel] = SwaTinyModel,
        **kwargs,
    ) -> None:
        self.window = window
        self.free_swa_slots = list(range(1, num_swa_slots))
        self.swa_slots_handed_out = 0
        self._released_upto: dict[int, int] = {}  # request row -> positions whose SWA slots were released
        pool = SWAKVPool(num_full_slots=num_slots, num_swa_slots=num_swa_slots) if pool is None else pool
        super().__init__(config, num_slots=num_slots, model_class=model_class, swa_window=window, pool=pool, **kwargs)

    @property
    def mapping(self) -> torch.Tensor:
        return self.pool.full_to_swa_index_mapping

    def swa_slot_of(self, request: Request, position: int) -> int:
        return int(self.mapping[self.slot_of(request, position)])

    def _allocate_slots(self, count: int) -> list[int]:
        full_slots = super()._allocate_slots(count)
        for full_slot in full_slots:
            self.mapping[full_slot] = self.free_swa_slots.pop(0)
            self.swa_slots_handed_out += 1
        return full_slots

    def _after_forward(self, requests: list[Request]) -> None:
        """Release what the next forward's window ``[len - window, len)`` no longer reads."""
        for request in requests:
            first_kept = max(0, len(request.tokens) - self.window)
            for position in range(self._released_upto.get(request.row, 0), first_kept):
                full_slot = self.slot_of(request, position)
                self.free_swa_slots.append(int(self.mapping[full_slot]))
                self.mapping[full_slot] = 0
            self._released_upto[request.row] = max(first_kept, self._released_upto.get(request.row, 0))
