"""A tiny decoder-only transformer whose weights come from a seed (nothing is downloaded)."""

from __future__ import annotations

import torch
from torch import nn

from mock_models.models.attention import AttentionContext, CompressedWindowAttention, FullAttention
from mock_models.models.forward_inputs import ForwardInputs
from mock_models.models.layers import MLP, QueryLayout, RMSNorm, seeded_normal
from mock_models.models.spec import LayerKind, ModelSpec


class DecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec, layer_id: int, generator: torch.Generator) -> None:
        super().__init__()
        kind = spec.layer_kinds[layer_id]
        if kind is LayerKind.COMPRESSED_WINDOW:
            self.attention: nn.Module = CompressedWindowAttention(spec, layer_id, generator)
        else:
            window = spec.swa_window if kind is LayerKind.WINDOW else None
            self.attention = FullAttention(spec, layer_id, generator, window=window)
        self.attention_norm = RMSNorm(spec.hidden_size)
        self.mlp_norm = RMSNorm(spec.hidden_size)
        self.mlp = MLP(spec.hidden_size, spec.intermediate_size, generator)

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, context: AttentionContext) -> torch.Tensor:
        hidden = hidden + self.attention(self.attention_norm(hidden), positions, context)
        return hidden + self.mlp(self.mlp_norm(hidden))


class TinyDecoderModel(nn.Module):
    """``forward(input_ids, positions, forward_batch)`` returns the final hidden states [N, hidden].

    There is no LM head: the engine samples with the token oracle. The hidden states feed the
    request's ``attention_checksum`` instead, through ``digest``.
    """

    def __init__(self, spec: ModelSpec, device: torch.device | str) -> None:
        super().__init__()
        self.spec = spec
        generator = torch.Generator().manual_seed(spec.seed)
        self.embed_tokens = seeded_normal((spec.vocab_size, spec.hidden_size), generator, 1)
        self.layers = nn.ModuleList(DecoderLayer(spec, layer_id, generator) for layer_id in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size)
        self.digest_direction = seeded_normal((spec.hidden_size,), generator, spec.hidden_size)
        self.to(device)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardInputs) -> torch.Tensor:
        context = AttentionContext(batch=forward_batch, queries=QueryLayout.build(forward_batch))
        hidden = self.embed_tokens[input_ids]
        for layer in self.layers:
            hidden = layer(hidden, positions, context)
        return self.norm(hidden)

    def digest(self, hidden: torch.Tensor) -> torch.Tensor:
        """One float64 per row: the projection of a final hidden state on a fixed direction."""
        return hidden.to(torch.float64) @ self.digest_direction.to(torch.float64)
