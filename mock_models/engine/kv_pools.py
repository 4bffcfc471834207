"""KV pools with SGLang's class and attribute names: the canary picks its adapter by class name.

Every buffer has ``size + page_size`` rows: the first page is padding (slot 0 is what padded
entries point at), so slot ``s`` is row ``s``. Writers pass full-pool slots; pools with an SWA
sub-pool translate them through ``full_to_swa_index_mapping`` for their window layers, which the
SWA allocator owns and registers here.
"""

from __future__ import annotations

from typing import Any

import torch

BufInfos = tuple[list[int], list[int], list[int]]  # data_ptrs, nbytes, item_lens (bytes of one page)


def _layer_buffers(
    rows: int, layer_num: int, head_num: int, head_dim: int, dtype: torch.dtype, device: torch.device
) -> list[torch.Tensor]:
    # Zeros, not empty: padding rows are read (and masked out) by padded attention.
    return [torch.zeros(rows, head_num, head_dim, dtype=dtype, device=device) for _ in range(layer_num)]


def _buf_infos(buffers: list[torch.Tensor], page_size: int) -> BufInfos:
    return (
        [buffer.data_ptr() for buffer in buffers],
        [buffer.nbytes for buffer in buffers],
        [buffer[0].nbytes * page_size for buffer in buffers],
    )


class MHATokenToKVPool:
    """One K and one V buffer per layer, [size + page_size, head_num, head_dim]."""

    def __init__(
        self,
        *,
        size: int,
        page_size: int,
        dtype: torch.dtype,
        head_num: int,
        head_dim: int,
        layer_num: int,
        device: torch.device | str,
    ) -> None:
        self.size = size
        self.page_size = page_size
        self.dtype = dtype
        self.device = torch.device(device)
        self.head_num = head_num
        self.head_dim = head_dim
        self.layer_num = layer_num
        self.k_buffer = _layer_buffers(size + page_size, layer_num, head_num, head_dim, dtype, self.device)
        self.v_buffer = _layer_buffers(size + page_size, layer_num, head_num, head_dim, dtype, self.device)

    def get_key_buffer(self, layer_id: int) -> torch.Tensor:
        return self.k_buffer[layer_id]

    def get_value_buffer(self, layer_id: int) -> torch.Tensor:
        return self.v_buffer[layer_id]

    def set_kv_buffer(self, layer_id: int, loc: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor) -> None:
        self.k_buffer[layer_id][loc] = cache_k.to(self.dtype)
        self.v_buffer[layer_id][loc] = cache_v.to(self.dtype)

    def get_contiguous_buf_infos(self) -> BufInfos:
        return _buf_infos(self.k_buffer + self.v_buffer, self.page_size)


class _SwaIndexMapped:
    """Pools with an SWA sub-pool: window layers reach it through the allocator's full-to-SWA map."""

    full_to_swa_index_mapping: torch.Tensor | None = None  # set by register_mapping

    def register_mapping(self, full_to_swa_index_mapping: torch.Tensor) -> None:
        self.full_to_swa_index_mapping = full_to_swa_index_mapping

    def translate_loc_from_full_to_swa(self, loc: torch.Tensor) -> torch.Tensor:
        mapping = self.full_to_swa_index_mapping
        if mapping is None:
            raise RuntimeError(
                f"{type(self).__name__}: no full_to_swa_index_mapping yet; the SWA allocator registers it "
                "(register_mapping) before the first forward"
            )
        return mapping[loc]


class SWAKVPool(_SwaIndexMapped):
    """Hybrid pool: full-attention layers in ``full_kv_pool``, window layers in ``swa_kv_pool``."""

    def __init__(
        self,
        *,
        size: int,
        size_swa: int,
        page_size: int,
        dtype: torch.dtype,
        head_num: int,
        head_dim: int,
        full_attention_layer_ids: list[int],
        swa_attention_layer_ids: list[int],
        device: torch.device | str,
    ) -> None:
        self.size = size
        self.size_swa = size_swa
        self.page_size = page_size
        self.dtype = dtype
        self.device = torch.device(device)
        common: dict[str, Any] = {
            "page_size": page_size,
            "dtype": dtype,
            "head_num": head_num,
            "head_dim": head_dim,
            "device": device,
        }
        self.full_kv_pool = MHATokenToKVPool(size=size, layer_num=len(full_attention_layer_ids), **common)
        self.swa_kv_pool = MHATokenToKVPool(size=size_swa, layer_num=len(swa_attention_layer_ids), **common)
        self.full_layer_nums = len(full_attention_layer_ids)
        self.swa_layer_nums = len(swa_attention_layer_ids)
        # model layer id -> (layer index inside its sub-pool, is it a window layer)
        self.layers_mapping = {layer: (index, False) for index, layer in enumerate(full_attention_layer_ids)}
        self.layers_mapping |= {layer: (index, True) for index, layer in enumerate(swa_attention_layer_ids)}

    def _sub_pool(self, layer_id: int) -> tuple[MHATokenToKVPool, int, bool]:
        index, is_swa = self.layers_mapping[layer_id]
        return (self.swa_kv_pool if is_swa else self.full_kv_pool), index, is_swa

    def get_key_buffer(self, layer_id: int) -> torch.Tensor:
        pool, index, _ = self._sub_pool(layer_id)
        return pool.get_key_buffer(index)

    def get_value_buffer(self, layer_id: int) -> torch.Tensor:
        pool, index, _ = self._sub_pool(layer_id)
        return pool.get_value_buffer(index)

    def set_kv_buffer(self, layer_id: int, loc: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor) -> None:
        pool, index, is_swa = self._sub_pool(layer_id)
        pool.set_kv_buffer(index, self.translate_loc_from_full_to_swa(loc) if is_swa else loc, cache_k, cache_v)

    def get_contiguous_buf_infos(self) -> BufInfos:
        return self.full_kv_pool.get_contiguous_buf_infos()

    def get_state_buf_infos(self) -> BufInfos:
        return self.swa_kv_pool.get_contiguous_buf_infos()


class LatentKTokenToKVPool:
    """A K-only pool: one latent row per slot per layer, read as both key and value (MLA-like)."""

    def __init__(
        self,
        *,
        size: int,
        page_size: int,
        dtype: torch.dtype,
        latent_dim: int,
        layer_num: int,
        device: torch.device | str,
    ) -> None:
        self.size = size
        self.page_size = page_size
        self.dtype = dtype
        self.device = torch.device(device)
        self.layer_num = layer_num
        self.k_buffer = _layer_buffers(size + page_size, layer_num, 1, latent_dim, dtype, self.device)
        self.v_buffer = None  # no V half: the latent is the value too

    def get_contiguous_buf_infos(self) -> BufInfos:
        return _buf_infos(self.k_buffer, self.page_size)


class CompressedKVPool:
    """One pooled latent per ``compress_ratio`` tokens, stored at the full slot of the group's last token.

    Indexing by full slot keeps the lookup a plain ``req_to_token`` read; the other rows of a
    group stay unused, which costs memory the tiny model does not miss.
    """

    def __init__(
        self,
        *,
        size: int,
        page_size: int,
        dtype: torch.dtype,
        latent_dim: int,
        layer_num: int,
        compress_ratio: int,
        device: torch.device | str,
    ) -> None:
        self.size = size
        self.page_size = page_size
        self.compress_ratio = compress_ratio
        self.kv_buffer = _layer_buffers(size + page_size, layer_num, 1, latent_dim, dtype, torch.device(device))

    def get_contiguous_buf_infos(self) -> BufInfos:
        return _buf_infos(self.kv_buffer, self.page_size)


class DeepSeekV4TokenToKVPool(_SwaIndexMapped):
    """DeepSeek-V4-style pool: a K-only SWA sub-pool for the window, a compressed pool beyond it.

    The full-pool slot space holds no K/V of its own: it indexes the compressed pool and the
    full-to-SWA map. The canary guards the SWA K half; the compressed pool is unguarded.
    """

    def __init__(
        self,
        *,
        size: int,
        size_swa: int,
        page_size: int,
        dtype: torch.dtype,
        latent_dim: int,
        layer_num: int,
        compress_ratio: int,
        device: torch.device | str,
    ) -> None:
        self.size = size
        self.size_swa = size_swa
        self.page_size = page_size
        self.dtype = dtype
        self.device = torch.device(device)
        self.layer_num = layer_num
        self.compress_ratio = compress_ratio
        self.swa_kv_pool = LatentKTokenToKVPool(
            size=size_swa, page_size=page_size, dtype=dtype, latent_dim=latent_dim, layer_num=layer_num, device=device
        )
        self.compressed_kv_pool = CompressedKVPool(
            size=size,
            page_size=page_size,
            dtype=dtype,
            latent_dim=latent_dim,
            layer_num=layer_num,
            compress_ratio=compress_ratio,
            device=device,
        )

    def get_key_buffer(self, layer_id: int) -> torch.Tensor:
        return self.swa_kv_pool.k_buffer[layer_id]

    def set_k_buffer(self, layer_id: int, loc: torch.Tensor, cache_k: torch.Tensor) -> None:
        self.swa_kv_pool.k_buffer[layer_id][self.translate_loc_from_full_to_swa(loc)] = cache_k.to(self.dtype)

    def get_compressed_buffer(self, layer_id: int) -> torch.Tensor:
        return self.compressed_kv_pool.kv_buffer[layer_id]

    def get_contiguous_buf_infos(self) -> BufInfos:
        return self.compressed_kv_pool.get_contiguous_buf_infos()

    def get_state_buf_infos(self) -> BufInfos:
        return self.swa_kv_pool.get_contiguous_buf_infos()
