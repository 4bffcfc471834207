"""Cutting a tiny model for one rank: tensor parallelism keeps a slice of every layer's attention
heads, pipeline parallelism a run of layers.

The whole model is built from its seed first and then cut, so every rank holds exactly the
weights of the one-rank model, and several ranks compute what one does (up to the order of a
sum). The ranks talk through the links passed in (``TensorParallelLinks``, ``PipelineLinks``,
torch.distributed in ``engine/ranks``); the models never import the engine.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Protocol

import torch
from torch import nn

from mock_models.config import RankLayout
from mock_models.models.attention import AttentionContext, CompressedWindowAttention, FullAttention
from mock_models.models.forward_inputs import ForwardInputs
from mock_models.models.layers import Linear, QueryLayout
from mock_models.models.spec import ModelSpec
from mock_models.models.tiny_decoder import DecoderLayer, TinyDecoderModel


class TensorParallelLinks(Protocol):
    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over the tensor-parallel ranks."""
        ...


class PipelineLinks(Protocol):
    def send_to_next(self, tensor: torch.Tensor) -> None: ...

    def receive_from_previous(self, like: torch.Tensor) -> torch.Tensor: ...

    def send_to_first(self, tensor: torch.Tensor) -> None: ...

    def receive_from_last(self, like: torch.Tensor) -> torch.Tensor: ...


def rank_spec(spec: ModelSpec, layout: RankLayout) -> ModelSpec:
    """The shape of what this rank's KV pool holds: its heads, its layers (numbered from 0)."""
    stage = layout.layers(spec.num_layers)
    return dataclasses.replace(
        spec,
        num_heads=spec.num_heads // layout.tp,
        layer_kinds=tuple(spec.layer_kinds[layer] for layer in stage),
    )


class _AllReducedAttention(nn.Module):
    """A head-sliced attention whose partial output projection is summed over the ranks."""

    def __init__(self, attention: nn.Module, links: TensorParallelLinks) -> None:
        super().__init__()
        self.inner = attention
        self._links = links

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, context: AttentionContext) -> torch.Tensor:
        return self._links.all_reduce(self.inner(hidden, positions, context))


def _rows(linear: Linear, start: int, stop: int) -> None:
    linear.weight = nn.Parameter(linear.weight[start:stop].clone(), requires_grad=False)


def _columns(linear: Linear, start: int, stop: int) -> None:
    linear.weight = nn.Parameter(linear.weight[:, start:stop].clone(), requires_grad=False)


def shard_heads(model: TinyDecoderModel, layout: RankLayout, links: TensorParallelLinks) -> TinyDecoderModel:
    """Keep this rank's heads in every layer (in place). dsv4's K-only latent is every head's, so its
    projection (and the latent pool) stays whole on every rank, as MLA engines replicate it."""
    heads = model.spec.num_heads // layout.tp
    first = layout.tp_rank * heads
    for layer in model.layers:
        attention = layer.attention
        if isinstance(attention, FullAttention):
            width = attention.head_dim
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
                _rows(projection, first * width, (first + heads) * width)
        elif isinstance(attention, CompressedWindowAttention):
            width = attention.latent_dim
            _rows(attention.q_proj, first * width, (first + heads) * width)
        else:
            raise TypeError(f"shard_heads: no head layout known for {type(attention).__name__}")
        _columns(attention.o_proj, first * width, (first + heads) * width)
        attention.num_heads = heads
        layer.attention = _AllReducedAttention(attention, links)
    return model


class PipelineStage(nn.Module):
    """One rank's run of layers. ``forward`` has the model's signature: the first stage embeds, the
    others receive the hidden states from the stage before; the last stage normalises and sends
    the final hidden states back to the first, which samples (here: digests) them."""

    def __init__(self, model: TinyDecoderModel, layout: RankLayout, links: PipelineLinks) -> None:
        super().__init__()
        stage = layout.layers(model.spec.num_layers)
        self.first = layout.pp_rank == 0
        self.last = layout.pp_rank == layout.pp - 1
        self.embed_tokens = model.embed_tokens
        self.layers = nn.ModuleList(model.layers[layer] for layer in stage)
        for local_id, layer in enumerate(self.layers):
            attention = typing.cast(DecoderLayer, layer).attention
            if isinstance(attention, _AllReducedAttention):
                attention = attention.inner
            # This rank's pool holds its layers only, numbered from 0.
            typing.cast(FullAttention | CompressedWindowAttention, attention).layer_id = local_id
        self.norm = model.norm
        self.digest_direction = model.digest_direction
        self._links = links

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardInputs) -> torch.Tensor:
        context = AttentionContext(batch=forward_batch, queries=QueryLayout.build(forward_batch))
        shape_of = self.embed_tokens[input_ids]  # [N, hidden]: the shape every stage passes on
        hidden = shape_of if self.first else self._links.receive_from_previous(shape_of)
        for layer in self.layers:
            hidden = layer(hidden, positions, context)
        if not self.last:
            self._links.send_to_next(hidden)
            return self._links.receive_from_last(shape_of) if self.first else hidden
        hidden = self.norm(hidden)
        if not self.first:
            self._links.send_to_first(hidden)
        return hidden

    def digest(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.to(torch.float64) @ self.digest_direction.to(torch.float64)


def model_for_rank(
    spec: ModelSpec,
    device: torch.device,
    layout: RankLayout,
    *,
    tensor_links: TensorParallelLinks | None,
    pipeline_links: PipelineLinks | None,
) -> TinyDecoderModel | PipelineStage:
    """The part of the model ``layout`` says this rank runs; the whole model for one rank."""
    model = TinyDecoderModel(spec, device)
    if layout.tp > 1:
        if tensor_links is None:
            raise ValueError(f"tp {layout.tp} needs tensor-parallel links")
        model = shard_heads(model, layout, tensor_links)
    if layout.pp > 1:
        if pipeline_links is None:
            raise ValueError(f"pp {layout.pp} needs pipeline links")
        return PipelineStage(model, layout, pipeline_links)
    return model
