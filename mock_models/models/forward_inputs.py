"""What a model reads from the engine in one forward, as types: the batch layout and the KV pool.

The engine's ``ForwardBatch`` (SGLang's field names) and its pools, of either memory backend,
have these shapes; the models import only this module, never the engine.
"""

from __future__ import annotations

from typing import Protocol

import torch


class SlotRows(Protocol):
    @property
    def req_to_token(self) -> torch.Tensor:
        """int32 [rows, max_context]: the full-pool slot of each position of each request row."""
        ...


class KvPool(Protocol):
    """Every pool: per-layer key (or latent) buffers indexed by slot."""

    @property
    def dtype(self) -> torch.dtype: ...

    def get_key_buffer(self, layer_id: int) -> torch.Tensor: ...


class FullKvPool(KvPool, Protocol):
    """K and V per layer (``mha``, and the full layers of ``swa``); writes take full-pool slots."""

    def get_value_buffer(self, layer_id: int) -> torch.Tensor: ...
    def set_kv_buffer(self, layer_id: int, loc: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor) -> None: ...


class WindowKvPool(FullKvPool, Protocol):
    """A pool with an SWA sub-pool: window layers read it through the full-to-SWA map."""

    def translate_loc_from_full_to_swa(self, loc: torch.Tensor) -> torch.Tensor: ...


class CompressedKvPool(KvPool, Protocol):
    """``dsv4``: a K-only latent per slot in an SWA sub-pool, and one pooled latent per group."""

    def set_k_buffer(self, layer_id: int, loc: torch.Tensor, cache_k: torch.Tensor) -> None: ...
    def get_compressed_buffer(self, layer_id: int) -> torch.Tensor: ...
    def translate_loc_from_full_to_swa(self, loc: torch.Tensor) -> torch.Tensor: ...


class ForwardInputs(Protocol):
    """One forward's layout: tokens request after request, each request's in position order.

    Device tensors beside their host copies (``*_cpu``), so the model needs no device read to
    size its padded grids.
    """

    @property
    def batch_size(self) -> int: ...
    @property
    def input_ids(self) -> torch.Tensor: ...
    @property
    def req_pool_indices(self) -> torch.Tensor:
        """int64 [B]: each request's row of ``req_to_token_pool``."""
        ...

    @property
    def req_pool_indices_cpu(self) -> list[int]: ...
    @property
    def seq_lens(self) -> torch.Tensor:
        """int64 [B]: prefix + new tokens."""
        ...

    @property
    def seq_lens_cpu(self) -> torch.Tensor: ...
    @property
    def extend_prefix_lens(self) -> torch.Tensor: ...
    @property
    def extend_seq_lens(self) -> torch.Tensor: ...
    @property
    def extend_prefix_lens_cpu(self) -> list[int]: ...
    @property
    def extend_seq_lens_cpu(self) -> list[int]: ...
    @property
    def extend_start_loc_cpu(self) -> list[int]:
        """Index of each request's first token in ``input_ids``."""
        ...

    @property
    def out_cache_loc(self) -> torch.Tensor:
        """int64 [N]: the full-pool slot each new token's K/V is written to."""
        ...

    @property
    def req_to_token_pool(self) -> SlotRows: ...
    @property
    def token_to_kv_pool(self) -> KvPool: ...
