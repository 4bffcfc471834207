"""Rank 0's side of a multi-rank engine: spawn ranks 1.., join their group, send each forward's
plan and each job, and stop them with the engine.

The other ranks are child processes (``python -m mock_models.engine.ranks.worker``, their launch
read from stdin) sharing the server's stderr, so their canaries' lines land in the server's log,
each naming its rank. They cannot outlive it: each asks the kernel for SIGKILL when its parent
dies (Linux), and watches its parent's pid too; ``close`` stops them and reaps them, killing one
that does not exit in time.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys

import torch

from kv_canary import CanaryConfig
from mock_models.config import EngineConfig, RankLayout
from mock_models.engine.ranks.messages import ForwardPlan, RankJob, RunJob, Stop, WorkerLaunch
from mock_models.engine.ranks.process_group import RankLinks, open_store

logger = logging.getLogger(__name__)

WORKER_MODULE = "mock_models.engine.ranks.worker"
STOP_GRACE_S = 10.0  # a rank told to stop drains its canary and leaves the group; then it is killed


class RankGroupError(RuntimeError):
    """A rank could not be started or has gone; the message says which and what to read."""


class RankGroup:
    def __init__(self, *, links: RankLinks, workers: list[subprocess.Popen[bytes]]) -> None:
        self.links = links
        self._workers = workers
        self._closed = False

    @classmethod
    def start(cls, config: EngineConfig, canary_config: CanaryConfig) -> RankGroup:
        """Spawn ranks 1 .. tp * pp - 1 and join them as rank 0; returns once every rank has joined."""
        layout = RankLayout.of(config, 0)
        store = open_store(port=0, layout=layout)
        workers: list[subprocess.Popen[bytes]] = []
        try:
            for rank in range(1, layout.size):
                launch = WorkerLaunch(
                    config=config,
                    canary_config=canary_config,
                    rank=rank,
                    store_port=store.port,
                    parent_pid=os.getpid(),
                )
                worker = subprocess.Popen([sys.executable, "-m", WORKER_MODULE], stdin=subprocess.PIPE)
                workers.append(worker)
                assert worker.stdin is not None  # stdin=PIPE
                worker.stdin.write(pickle.dumps(launch))
                worker.stdin.close()
            links = RankLinks(store=store, layout=layout, device=torch.device(config.device))
        except BaseException:
            _kill(workers)
            raise
        logger.info("ranks joined: tp %d x pp %d, worker pids %s", config.tp, config.pp, [w.pid for w in workers])
        return cls(links=links, workers=workers)

    @property
    def worker_pids(self) -> list[int]:
        return [worker.pid for worker in self._workers]

    def send_forward(self, plan: ForwardPlan) -> None:
        """Every other rank runs this forward next (the caller runs it on rank 0)."""
        self.links.broadcast(plan)

    def run(self, job: RankJob, ranks: tuple[int, ...], *, on_rank0: object) -> list[object]:
        """Run ``job`` on ``ranks`` (rank 0's runner: ``on_rank0``); the answers by rank, None where it did not run."""
        self.links.broadcast(RunJob(job=job, ranks=ranks))
        answers = self.links.gather(job(on_rank0) if 0 in ranks else None)
        assert answers is not None  # rank 0 gathers
        return answers

    def close(self) -> None:
        """Stop every rank (each drains its canary first) and reap it."""
        if self._closed:
            return
        self._closed = True
        try:
            self.links.broadcast(Stop())
        except RuntimeError as error:  # a rank already gone: the others are killed below
            logger.error("stopping the ranks: %s", error)
        # Every rank leaves the group at once: leaving may wait for the others.
        self.links.close()
        for worker in self._workers:
            try:
                worker.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                logger.error("rank process %d did not stop within %.0f s; killing it", worker.pid, STOP_GRACE_S)
                worker.kill()
                worker.wait()


def _kill(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        worker.kill()
        worker.wait()
