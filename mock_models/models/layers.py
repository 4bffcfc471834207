"""Building blocks shared by the tiny models: seeded weights, norm, MLP, rotary, padded attention.

Attention runs over a padded [batch, query, key] layout built once per forward from the batch's
host-side lengths, so a forward costs the same number of kernel launches whatever its batch
size, and no length is read back from the device.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from mock_models.models.forward_inputs import ForwardInputs

_MASKED = -1.0e30  # not -inf: a padded query row with no visible key must not produce NaN


def seeded_normal(shape: tuple[int, ...], generator: torch.Generator, fan_in: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(shape, generator=generator) / math.sqrt(fan_in), requires_grad=False)


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, generator: torch.Generator) -> None:
        super().__init__()
        self.weight = seeded_normal((out_features, in_features), generator, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, generator: torch.Generator) -> None:
        super().__init__()
        self.up = Linear(hidden_size, intermediate_size, generator)
        self.down = Linear(intermediate_size, hidden_size, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.silu(self.up(x)))


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate [N, heads, dim] by position (rotate-half form); K is stored rotated, as engines do."""
    half = x.shape[-1] // 2
    inv_freq = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class QueryLayout:
    """Where each request's new tokens sit in a padded [batch, max_new] grid."""

    token_of_cell: torch.Tensor  # int64 [B, Tq]: index into the flat token arrays (0 for padding)
    positions: torch.Tensor  # int64 [B, Tq]: position of each query cell
    cell_of_token: torch.Tensor  # int64 [N]: flat index b * Tq + t of each token, to un-pad outputs

    @classmethod
    def build(cls, batch: ForwardInputs) -> QueryLayout:
        device = batch.input_ids.device
        max_new = max(batch.extend_seq_lens_cpu)
        steps = torch.arange(max_new, device=device)
        starts = torch.tensor(batch.extend_start_loc_cpu, dtype=torch.int64).to(device)
        is_real = steps[None, :] < batch.extend_seq_lens[:, None]
        token_of_cell = torch.where(is_real, starts[:, None] + steps[None, :], 0)
        cells = [b * max_new + t for b, n in enumerate(batch.extend_seq_lens_cpu) for t in range(n)]
        return cls(
            token_of_cell=token_of_cell,
            positions=batch.extend_prefix_lens.to(torch.int64)[:, None] + steps[None, :],
            cell_of_token=torch.tensor(cells, dtype=torch.int64).to(device),
        )

    def pad(self, per_token: torch.Tensor) -> torch.Tensor:
        return per_token[self.token_of_cell]

    def unpad(self, per_cell: torch.Tensor) -> torch.Tensor:
        return per_cell.flatten(0, 1)[self.cell_of_token]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class KeySpan:
    """The positions ``[start, seq_len)`` of each request, as a padded [batch, max_len] grid."""

    positions: torch.Tensor  # int64 [B, Lk]
    valid: torch.Tensor  # bool [B, Lk]
    full_slots: torch.Tensor  # int64 [B, Lk]: req_to_token entries; 0 (padding slot) where not valid

    @classmethod
    def at_positions(cls, batch: ForwardInputs, positions: torch.Tensor) -> KeySpan:
        """Positions past a request's ``seq_len`` are padding."""
        valid = positions < batch.seq_lens[:, None]
        safe_positions = torch.where(valid, positions, 0)
        slots = batch.req_to_token_pool.req_to_token[batch.req_pool_indices[:, None], safe_positions]
        return cls(positions=positions, valid=valid, full_slots=torch.where(valid, slots.to(torch.int64), 0))

    @classmethod
    def from_starts(cls, batch: ForwardInputs, starts_cpu: list[int]) -> KeySpan:
        device = batch.input_ids.device
        longest = max(seq - start for seq, start in zip(batch.seq_lens_cpu.tolist(), starts_cpu, strict=True))
        starts = torch.tensor(starts_cpu, dtype=torch.int64).to(device)
        return cls.at_positions(batch, starts[:, None] + torch.arange(longest, device=device)[None, :])

    @classmethod
    def whole_sequence(cls, batch: ForwardInputs) -> KeySpan:
        return cls.from_starts(batch, [0] * batch.batch_size)

    @classmethod
    def window(cls, batch: ForwardInputs, window: int) -> KeySpan:
        return cls.from_starts(batch, [max(0, prefix - window) for prefix in batch.extend_prefix_lens_cpu])

    def visible_from(self, query_positions: torch.Tensor, window: int | None) -> torch.Tensor:
        """bool [B, Tq, Lk]: causal, and within ``window`` positions back when given."""
        keys, queries = self.positions[:, None, :], query_positions[:, :, None]
        visible = self.valid[:, None, :] & (keys <= queries)
        if window is not None:
            visible &= keys >= queries - window
        return visible


def padded_attention(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor
) -> torch.Tensor:
    """Softmax attention. queries [B, Tq, H, D]; keys, values [B, Lk, H or 1, D]; visible [B, Tq, Lk]."""
    scale = 1.0 / math.sqrt(queries.shape[-1])
    keys = keys.to(queries.dtype).expand(-1, -1, queries.shape[2], -1)
    values = values.to(queries.dtype).expand(-1, -1, queries.shape[2], -1)
    scores = torch.einsum("bqhd,bkhd->bhqk", queries, keys) * scale
    scores = scores.masked_fill(~visible[:, None, :, :], _MASKED)
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), values)
