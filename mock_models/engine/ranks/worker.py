"""A rank other than 0: ``python -m mock_models.engine.ranks.worker``, its ``WorkerLaunch`` on stdin.

It builds its part of the model and its shard of the KV pool with its own canary, joins the
group, then runs what rank 0 sends, in order: each forward's plan (its request rows and SWA map
brought up to rank 0's, then the forward), jobs between forwards, and stop. Its canary logs to
the stderr it shares with the server, each line naming its rank.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import signal
import sys
import threading
import time

import torch

from kv_canary import KvCanaryViolationError
from mock_models.config import RankLayout
from mock_models.engine.model_runner import ModelRunner
from mock_models.engine.ranks.forward_plans import batch_of
from mock_models.engine.ranks.messages import ForwardPlan, RunJob, Stop, WorkerLaunch
from mock_models.engine.ranks.process_group import RankLinks, open_store

logger = logging.getLogger("mock_models.engine.ranks")

_PR_SET_PDEATHSIG = 1
_PARENT_POLL_S = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Exit as soon as the server that spawned this rank is gone, however it went."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    def watch() -> None:  # also where prctl is not: a parent gone re-parents this process
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve_rank(launch: WorkerLaunch) -> None:
    config = launch.config
    layout = RankLayout.of(config, launch.rank)
    device = torch.device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(layout.rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
        config = config.replace(device=str(device))
    else:
        torch.set_num_threads(1)  # as the server: the tiny model's ops gain nothing from threads
    links = RankLinks(store=open_store(port=launch.store_port, layout=layout), layout=layout, device=device)
    runner = ModelRunner(config, layout=layout, links=links)
    runner.install_canary(launch.canary_config, runner.radix_cache)
    mapping = runner.swa_allocator.full_to_swa_index_mapping if runner.swa_allocator is not None else None
    try:
        while True:
            message = links.broadcast(None)
            if isinstance(message, Stop):
                break
            if isinstance(message, ForwardPlan):
                batch = batch_of(
                    message,
                    req_to_token_pool=runner.req_to_token_pool,
                    token_to_kv_pool=runner.token_to_kv_pool,
                    full_to_swa_index_mapping=mapping,
                    device=device,
                )
                # Mode raise: the lines are logged; rank 0 answers its own requests.
                with contextlib.suppress(KvCanaryViolationError):
                    runner.run_model(batch)
            elif isinstance(message, RunJob):
                links.gather(message.job(runner) if layout.rank in message.ranks else None)
    finally:
        runner.close_canary()
        links.close()


def main() -> None:
    launch = pickle.loads(sys.stdin.buffer.read())
    if not isinstance(launch, WorkerLaunch):
        raise SystemExit(f"{__name__}: stdin held a {type(launch).__name__}, not a WorkerLaunch")
    die_with_parent(launch.parent_pid)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s %(name)s[rank {launch.rank}]: %(message)s",
    )
    serve_rank(launch)
    logging.shutdown()
    # Without the interpreter's shutdown: a collective library's threads can hold it up, and there
    # is nothing left to clean (the canary is drained, the group left, stderr flushed).
    os._exit(0)


if __name__ == "__main__":
    main()
