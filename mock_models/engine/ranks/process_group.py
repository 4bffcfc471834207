"""Joining the ranks' torch.distributed group, and the three ways ranks talk over it.

* the control channel (rank 0 to all: ``broadcast``; all to rank 0: ``gather``): gloo, on the host;
* the tensor-parallel sum of attention outputs (``all_reduce``);
* the pipeline's hand-over of hidden states between stages, and back to the first stage.

Tensors go over NCCL on CUDA and over gloo on the CPU; the control channel is always gloo (a
second group on CUDA), as engines keep their CPU-side messages off the GPUs' links.
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

# Where torch defines them (torch.distributed re-exports them without declaring it to type checkers).
from torch._C._distributed_c10d import Store, TCPStore

from mock_models.config import RankLayout
from mock_models.engine.ranks.messages import Message

HOST = "127.0.0.1"
# How long a rank waits for the others to join, and for a collective: a CPU forward takes
# milliseconds, so a rank silent this long is gone; a longer wait would only delay the error.
JOIN_TIMEOUT = datetime.timedelta(seconds=120)


def open_store(*, port: int, layout: RankLayout) -> TCPStore:
    """Rank 0 serves the store (``port`` 0: a free loopback port, read back from ``store.port``)."""
    return TCPStore(HOST, port, layout.size, is_master=layout.rank == 0, timeout=JOIN_TIMEOUT, wait_for_workers=False)


class RankLinks:
    """This rank's membership of the group; satisfies the models' TensorParallelLinks and PipelineLinks."""

    def __init__(self, *, store: Store, layout: RankLayout, device: torch.device) -> None:
        self.layout = layout
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=store, rank=layout.rank, world_size=layout.size, timeout=JOIN_TIMEOUT)
        self._control = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    # -- the control channel --------------------------------------------------------------------

    def broadcast(self, message: Message | None) -> Message:
        """Rank 0 sends ``message``; every rank returns it."""
        box: list[object] = [message]
        dist.broadcast_object_list(box, src=0, group=self._control)
        return box[0]  # type: ignore[return-value]

    def gather(self, answer: object) -> list[object] | None:
        """Every rank's ``answer``, by rank, on rank 0; None on the others."""
        answers: list[object] | None = [None] * self.layout.size if self.layout.rank == 0 else None
        dist.gather_object(answer, answers, dst=0, group=self._control)
        return answers

    # -- tensor parallelism ---------------------------------------------------------------------

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor)
        return tensor

    # -- pipeline parallelism -------------------------------------------------------------------

    def _stage_rank(self, pp_rank: int) -> int:
        return self.layout.rank_of(tp_rank=self.layout.tp_rank, pp_rank=pp_rank)

    def send_to_next(self, tensor: torch.Tensor) -> None:
        dist.send(tensor.contiguous(), self._stage_rank(self.layout.pp_rank + 1))

    def receive_from_previous(self, like: torch.Tensor) -> torch.Tensor:
        received = torch.empty_like(like)
        dist.recv(received, self._stage_rank(self.layout.pp_rank - 1))
        return received

    def send_to_first(self, tensor: torch.Tensor) -> None:
        dist.send(tensor.contiguous(), self._stage_rank(0))

    def receive_from_last(self, like: torch.Tensor) -> torch.Tensor:
        received = torch.empty_like(like)
        dist.recv(received, self._stage_rank(self.layout.pp - 1))
        return received
