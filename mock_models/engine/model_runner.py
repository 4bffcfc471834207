"""Builds the model and its memory (request rows, KV pools, slot allocators), installs the
canary, and runs one forward.

This is the one place that talks to ``kv_canary``: the canary is installed through its public
API after the pools exist, exactly as a real engine would do it.
"""

from __future__ import annotations

import logging

import torch

from kv_canary import CanaryConfig, CanaryManager, install_canary
from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.forward_batch import ForwardBatch
from mock_models.engine.memory import build_memory
from mock_models.engine.memory_protocols import EnginePrefixCache
from mock_models.models.dsv4 import dsv4_spec
from mock_models.models.mha import mha_spec
from mock_models.models.swa import swa_spec
from mock_models.models.tiny_decoder import TinyDecoderModel

logger = logging.getLogger(__name__)

_SPECS = {ModelMode.MHA: mha_spec, ModelMode.SWA: swa_spec, ModelMode.DSV4: dsv4_spec}


class ModelRunner:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.spec = _SPECS[config.model_mode](config)
        self.model = TinyDecoderModel(self.spec, self.device)
        memory = build_memory(config, self.spec)
        self.req_to_token_pool = memory.req_to_token_pool
        self.token_to_kv_pool = memory.token_to_kv_pool
        self.full_allocator = memory.full_allocator
        self.swa_allocator = memory.swa_allocator
        self.radix_cache = memory.radix_cache
        # The digest of the hidden state each output was sampled from, by request row and output
        # index since the row's admission (an overlap overrun lands one past the last output).
        self.output_digests = torch.zeros(
            config.max_running_requests + 1, config.max_context_len + 1, dtype=torch.float64, device=self.device
        )
        self.canary: CanaryManager | None = None

    def install_canary(self, canary_config: CanaryConfig, radix_cache: EnginePrefixCache) -> CanaryManager | None:
        """Install the KV canary after the pools exist; returns its manager, or None when it is off."""
        swa_window = self.config.swa_window if self.config.has_swa_pool else None
        self.canary = install_canary(
            model=self.model,
            kv_pool=self.token_to_kv_pool,
            req_to_token_pool=self.req_to_token_pool,
            config=canary_config,
            swa_window=swa_window,
        )
        if self.canary is not None:
            self.canary.attach_prefix_cache(radix_cache)
            logger.info("kv canary installed: mode=%s", canary_config.mode.value)
        return self.canary

    def forward(
        self, batch: ForwardBatch, sampled_token_indices: list[int], sampled_rows: list[int], output_indices: list[int]
    ) -> None:
        """Run the model; the hidden state at each sampled token's index is digested into
        ``output_digests[row, output index]``."""
        # Through the attribute, so a wrapper installed on model.forward (the canary) runs.
        hidden = self.model.forward(batch.input_ids, batch.positions, batch)
        if sampled_token_indices:
            indices = torch.tensor(sampled_token_indices, dtype=torch.int64).to(self.device)
            rows = torch.tensor(sampled_rows, dtype=torch.int64).to(self.device)
            outputs = torch.tensor(output_indices, dtype=torch.int64).to(self.device)
            self.output_digests[rows, outputs] = self.model.digest(hidden[indices])

    def read_digests(self, spans: list[tuple[int, int]]) -> list[list[float]]:
        """The digests of the first ``count`` outputs of each (row, count), in one device read: done
        once per step that finishes or retracts requests, whose results go back to the host anyway."""
        if not spans:
            return []
        flat = torch.cat([self.output_digests[row, :count] for row, count in spans]).tolist()
        digests, start = [], 0
        for _, count in spans:
            digests.append(flat[start : start + count])
            start += count
        return digests
