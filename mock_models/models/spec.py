"""The shape of a tiny model: dims, and which attention each layer runs."""

from __future__ import annotations

import dataclasses
import enum


class LayerKind(enum.Enum):
    FULL = "full"  # reads every position of the request from the full pool
    WINDOW = "window"  # reads the last swa_window positions from the SWA sub-pool
    COMPRESSED_WINDOW = "compressed_window"  # dsv4: K-only window plus compressed entries beyond it


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ModelSpec:
    vocab_size: int
    layer_kinds: tuple[LayerKind, ...]
    seed: int
    hidden_size: int = 64
    num_heads: int = 2
    head_dim: int = 16  # K/V rows: num_heads * head_dim values (128 bytes in fp32, 64 in bf16)
    latent_dim: int = 32  # dsv4: the K-only latent row, read as key and value
    intermediate_size: int = 128
    swa_window: int = 0  # window layers: a query at position p reads positions [p - swa_window, p]
    compress_ratio: int = 4  # dsv4: tokens per compressed entry
    rope_theta: float = 10000.0

    @property
    def num_layers(self) -> int:
        return len(self.layer_kinds)

    def layer_ids(self, kind: LayerKind) -> list[int]:
        return [layer for layer, layer_kind in enumerate(self.layer_kinds) if layer_kind is kind]
