"""The three attention layers. Each writes its K/V into the pool at ``out_cache_loc`` and reads
every key back from the pool through ``req_to_token`` (never from the tensors it just computed),
so corrupted K/V in the cache changes what the layer computes.
"""

from __future__ import annotations

import dataclasses
import typing

import torch
from torch import nn

from mock_models.models.forward_inputs import CompressedKvPool, ForwardInputs, WindowKvPool
from mock_models.models.layers import KeySpan, Linear, QueryLayout, apply_rotary, padded_attention
from mock_models.models.spec import ModelSpec


@dataclasses.dataclass(kw_only=True, slots=True)
class AttentionContext:
    """Per-forward layouts, built once and shared by every layer."""

    batch: ForwardInputs
    queries: QueryLayout
    whole_sequence: KeySpan | None = None
    window: KeySpan | None = None
    compressed: KeySpan | None = None  # dsv4: the end position of every complete group


class FullAttention(nn.Module):
    """Multi-head attention over every cached position; ``window`` limits it to the last ones."""

    def __init__(
        self, spec: ModelSpec, layer_id: int, generator: torch.Generator, *, window: int | None = None
    ) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.window = window
        self.num_heads, self.head_dim, self.rope_theta = spec.num_heads, spec.head_dim, spec.rope_theta
        width = spec.num_heads * spec.head_dim
        self.q_proj = Linear(spec.hidden_size, width, generator)
        self.k_proj = Linear(spec.hidden_size, width, generator)
        self.v_proj = Linear(spec.hidden_size, width, generator)
        self.o_proj = Linear(width, spec.hidden_size, generator)

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, context: AttentionContext) -> torch.Tensor:
        batch = context.batch
        # The engine builds the pool for the same model mode as the layers: full layers get a pool
        # with K and V (and, for window layers, the full-to-SWA map).
        pool = typing.cast(WindowKvPool, batch.token_to_kv_pool)
        shape = (hidden.shape[0], self.num_heads, self.head_dim)
        q = apply_rotary(self.q_proj(hidden).view(shape), positions, self.rope_theta)
        k = apply_rotary(self.k_proj(hidden).view(shape), positions, self.rope_theta)
        pool.set_kv_buffer(self.layer_id, batch.out_cache_loc, k, self.v_proj(hidden).view(shape))

        span = self._key_span(context)
        slots = span.full_slots if self.window is None else pool.translate_loc_from_full_to_swa(span.full_slots)
        keys = pool.get_key_buffer(self.layer_id)[slots]
        values = pool.get_value_buffer(self.layer_id)[slots]
        visible = span.visible_from(context.queries.positions, self.window)
        out = padded_attention(context.queries.pad(q), keys, values, visible)
        return self.o_proj(context.queries.unpad(out).flatten(1))

    def _key_span(self, context: AttentionContext) -> KeySpan:
        if self.window is None:
            if context.whole_sequence is None:
                context.whole_sequence = KeySpan.whole_sequence(context.batch)
            return context.whole_sequence
        if context.window is None:
            context.window = KeySpan.window(context.batch, self.window)
        return context.window


class CompressedWindowAttention(nn.Module):
    """DeepSeek-V4-style: a K-only latent per token, read as key and value (MLA-like).

    Keys are the window's latents from the SWA sub-pool plus, for older positions, one pooled
    latent per ``compress_ratio`` tokens from the compressed pool. A group's pooled latent is
    written when its last token is computed, from latents read back from the SWA sub-pool.
    """

    def __init__(self, spec: ModelSpec, layer_id: int, generator: torch.Generator) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.window, self.ratio = spec.swa_window, spec.compress_ratio
        self.num_heads, self.latent_dim = spec.num_heads, spec.latent_dim
        self.q_proj = Linear(spec.hidden_size, spec.num_heads * spec.latent_dim, generator)
        self.latent_proj = Linear(spec.hidden_size, spec.latent_dim, generator)
        self.o_proj = Linear(spec.num_heads * spec.latent_dim, spec.hidden_size, generator)

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, context: AttentionContext) -> torch.Tensor:
        batch = context.batch
        pool = typing.cast(CompressedKvPool, batch.token_to_kv_pool)  # dsv4 layers run on the dsv4 pool
        latents = self.latent_proj(hidden).view(hidden.shape[0], 1, self.latent_dim)
        pool.set_k_buffer(self.layer_id, batch.out_cache_loc, latents)
        self._write_completed_groups(batch)

        if context.window is None:
            context.window = KeySpan.window(batch, self.window)
        window = context.window
        window_keys = pool.get_key_buffer(self.layer_id)[pool.translate_loc_from_full_to_swa(window.full_slots)]
        if context.compressed is None:
            context.compressed = self._compressed_span(batch)
        compressed = context.compressed
        compressed_keys = pool.get_compressed_buffer(self.layer_id)[compressed.full_slots]
        query_positions = context.queries.positions
        # A group is read compressed once all of it has left the query's window.
        compressed_visible = compressed.valid[:, None, :] & (
            compressed.positions[:, None, :] < query_positions[:, :, None] - self.window
        )
        keys = torch.cat((window_keys, compressed_keys), dim=1)
        visible = torch.cat((window.visible_from(query_positions, self.window), compressed_visible), dim=2)
        q = self.q_proj(hidden).view(hidden.shape[0], self.num_heads, self.latent_dim)
        out = padded_attention(context.queries.pad(q), keys, keys, visible)
        return self.o_proj(context.queries.unpad(out).flatten(1))

    def _write_completed_groups(self, batch: ForwardInputs) -> None:
        """Pool the latents of every group whose last token this forward computed."""
        rows, group_ends = [], []
        for row, prefix, new in zip(
            batch.req_pool_indices_cpu, batch.extend_prefix_lens_cpu, batch.extend_seq_lens_cpu, strict=True
        ):
            first_end = prefix + (self.ratio - 1 - prefix) % self.ratio
            for end in range(first_end, prefix + new, self.ratio):
                rows.append(row)
                group_ends.append(end)
        if not group_ends:
            return
        device = batch.input_ids.device
        pool = typing.cast(CompressedKvPool, batch.token_to_kv_pool)
        rows_t = torch.tensor(rows, dtype=torch.int64).to(device)[:, None]
        members = (
            torch.tensor(group_ends, dtype=torch.int64).to(device)[:, None]
            - torch.arange(self.ratio - 1, -1, -1, device=device)[None, :]
        )
        member_slots = batch.req_to_token_pool.req_to_token[rows_t, members].to(torch.int64)
        member_latents = pool.get_key_buffer(self.layer_id)[pool.translate_loc_from_full_to_swa(member_slots)]
        group_slots = member_slots[:, -1]
        pool.get_compressed_buffer(self.layer_id)[group_slots] = (
            member_latents.to(torch.float32).mean(dim=1).to(pool.dtype)
        )

    def _compressed_span(self, batch: ForwardInputs) -> KeySpan:
        """Group end positions ``ratio - 1, 2 * ratio - 1, ...`` of groups complete in each request."""
        device = batch.input_ids.device
        num_groups = max(1, max(batch.seq_lens_cpu.tolist()) // self.ratio)
        ends = torch.arange(num_groups, device=device) * self.ratio + self.ratio - 1
        return KeySpan.at_positions(batch, ends[None, :].expand(batch.batch_size, -1))
