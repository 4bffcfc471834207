"""Builds the model and its memory (request rows, KV pools, slot allocators), installs the
canary, and runs one forward.

This is the one place that talks to ``kv_canary``: the canary is installed through its public
API after the pools exist, exactly as a real engine would do it. With several ranks, every rank
has its own runner: its part of the model, its shard of the KV pool (``RankLayout``), its canary.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Protocol

import torch

from kv_canary import CanaryConfig, CanaryManager, KvCanaryViolationError, install_canary
from mock_models.config import EngineConfig, ModelMode, RankLayout
from mock_models.engine.forward_batch import ForwardBatch
from mock_models.engine.memory import build_memory
from mock_models.engine.memory_protocols import EnginePrefixCache
from mock_models.models.dsv4 import dsv4_spec
from mock_models.models.mha import mha_spec
from mock_models.models.parallel import PipelineLinks, TensorParallelLinks, model_for_rank, rank_spec
from mock_models.models.swa import swa_spec

logger = logging.getLogger(__name__)

_SPECS = {ModelMode.MHA: mha_spec, ModelMode.SWA: swa_spec, ModelMode.DSV4: dsv4_spec}
_ONE_RANK = RankLayout()

# Runs a forward in place of the plain one: called with the batch and the plain forward, which it
# must call once (a fault that needs to act on both sides of one forward).
ForwardInterceptor = Callable[[ForwardBatch, Callable[[], None]], None]


class RankLinkSet(TensorParallelLinks, PipelineLinks, Protocol):
    """What a rank of several talks through (``engine.ranks.process_group.RankLinks``)."""


class ModelRunner:
    def __init__(
        self, config: EngineConfig, *, layout: RankLayout = _ONE_RANK, links: RankLinkSet | None = None
    ) -> None:
        self.config = config
        self.layout = layout
        self.device = torch.device(config.device)
        self.spec = _SPECS[config.model_mode](config)
        self.model = model_for_rank(self.spec, self.device, layout, tensor_links=links, pipeline_links=links)
        memory = build_memory(config, rank_spec(self.spec, layout))
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
        self._interceptors: list[ForwardInterceptor] = []

    def install_canary(self, canary_config: CanaryConfig, radix_cache: EnginePrefixCache) -> CanaryManager | None:
        """Install the KV canary after the pools exist; returns its manager, or None when it is off."""
        swa_window = self.config.swa_window if self.config.has_swa_pool else None
        self.canary = install_canary(
            model=self.model,
            kv_pool=self.token_to_kv_pool,
            req_to_token_pool=self.req_to_token_pool,
            config=canary_config,
            swa_window=swa_window,
            rank=self.layout.rank if self.layout.size > 1 else None,
        )
        if self.canary is not None:
            self.canary.attach_prefix_cache(radix_cache)
            logger.info("kv canary installed: mode=%s", canary_config.mode.value)
        return self.canary

    def intercept_next_forward(self, interceptor: ForwardInterceptor) -> None:
        """Let ``interceptor`` run the next forward (once)."""
        self._interceptors.append(interceptor)

    def run_model(self, batch: ForwardBatch) -> torch.Tensor:
        """The model's forward (every rank runs it); returns the final hidden states (on rank 0)."""
        hidden: list[torch.Tensor] = []

        def plain() -> None:
            # Through the attribute, so a wrapper installed on model.forward (the canary) runs.
            hidden.append(self.model.forward(batch.input_ids, batch.positions, batch))

        run: Callable[[], None] = plain
        interceptors, self._interceptors = self._interceptors, []
        for interceptor in interceptors:
            run = functools.partial(interceptor, batch, run)
        run()
        if len(hidden) != 1:
            raise RuntimeError(f"forward interceptors {interceptors!r} ran the forward {len(hidden)} times, not once")
        return hidden[0]

    def forward(
        self, batch: ForwardBatch, sampled_token_indices: list[int], sampled_rows: list[int], output_indices: list[int]
    ) -> None:
        """Run the model; the hidden state at each sampled token's index is digested into
        ``output_digests[row, output index]``."""
        hidden = self.run_model(batch)
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

    def close_canary(self) -> None:
        """Drain the canary's last reports. Call between forwards, from the thread that steps."""
        if self.canary is not None:
            # Mode raise: the lines are logged already, and there is no one left to tell.
            with contextlib.suppress(KvCanaryViolationError):
                self.canary.flush()
            self.canary = None
