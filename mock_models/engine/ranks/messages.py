"""The messages rank 0 sends the other ranks over the control channel, in the order it sends them.

A ``ForwardPlan`` is everything a rank needs to run the forward rank 0 scheduled: the batch's
host values and the scheduler's request-to-slot state the forward reads (each request's rows of
``req_to_token`` and ``req_token_ids``, the full-to-SWA map), which only rank 0 changes, as one
scheduler does for all ranks of a real engine. Everything is on the host: the control channel is
gloo even where the ranks' tensors go over NCCL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from kv_canary import CanaryConfig
from mock_models.config import EngineConfig


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class WorkerLaunch:
    """What a spawned rank reads from its stdin before it joins the group."""

    config: EngineConfig
    canary_config: CanaryConfig
    rank: int
    store_port: int  # rank 0's TCPStore on 127.0.0.1
    parent_pid: int  # a rank whose parent is gone exits


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ForwardPlan:
    forward_mode: str
    input_ids: list[int]
    positions: list[int]
    req_pool_indices: list[int]
    extend_prefix_lens: list[int]
    extend_seq_lens: list[int]
    out_cache_loc: list[int]
    req_to_token_rows: list[torch.Tensor]  # int32 [seq_len] per request: its slots up to this forward's end
    req_token_id_rows: list[torch.Tensor]  # int64 [seq_len] per request: the tokens recorded there
    full_to_swa_index_mapping: torch.Tensor | None  # the whole map, in modes with an SWA pool


# A job runs on a rank's ModelRunner between forwards; a module-level function (it crosses the
# process boundary by name) whose result is picklable.
RankJob = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RunJob:
    job: RankJob
    ranks: tuple[int, ...]  # the ranks that run it; the others answer None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Stop:
    """The engine is closing: drain the canary, leave the group, exit."""


Message = ForwardPlan | RunJob | Stop
