"""Timing jitter: random, seeded delays where a serving engine's timing varies from run to run.

A bug in KV bookkeeping often needs one interleaving to show: a request that arrives, is aborted
or disconnects between two particular steps; a copy that a side stream finishes late. With
``EngineConfig.jitter_max_us`` set, the engine pauses for a uniform random time of up to that
many microseconds at each point below, drawn from ``random.Random(jitter_seed)``, so one seed
replays the same delays (what lands between them depends on the clients' timing too):

* after a forward is scheduled (its batch known, no slot allocated yet), and right before the
  model runs;
* before every K/V write into the pool (each layer's ``set_kv_buffer`` / ``set_k_buffer``);
* before every free of full-pool slots or SWA slots (finishing, aborts, window releases, eviction).

On the CPU a pause sleeps the engine thread, so HTTP handlers (``server/jitter_middleware.py``
adds their own pauses) submit, abort and disconnect at other points between forwards. On CUDA
it spins the current stream instead (``torch.cuda._sleep``): the host runs ahead of the device by
that much, as it does under load, which is where a missing stream synchronisation shows.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from typing import Any

import torch

# torch.cuda._sleep spins for a number of GPU clock cycles; at the 1-2 GHz of current data-centre
# parts this many cycles is about a microsecond, which is as exact as a jitter needs to be.
_CYCLES_PER_US = 1_500

# The memory methods a pause precedes, where the object has them: every pool's K/V writes, the
# full allocator's frees, the SWA allocator's releases and frees.
_WRITES = ("set_kv_buffer", "set_k_buffer")
_FREES = ("free", "release", "free_swa")


class Jitter:
    """Pauses of up to ``max_us`` microseconds, seeded; ``max_us`` 0 makes every pause a no-op."""

    def __init__(self, *, max_us: int, seed: int | str, device: torch.device) -> None:
        if max_us < 0:
            raise ValueError(f"jitter max_us = {max_us}: must be >= 0 (0 turns jitter off)")
        self.max_us = max_us
        self.device = device
        self.pauses = 0
        self.total_us = 0
        self._rng = random.Random(seed)

    @property
    def enabled(self) -> bool:
        return self.max_us > 0

    def pause(self) -> None:
        if not self.max_us:
            return
        delay_us = self._rng.randint(0, self.max_us)
        self.pauses += 1
        self.total_us += delay_us
        if self.device.type == "cuda":
            torch.cuda._sleep(delay_us * _CYCLES_PER_US)
        else:
            time.sleep(delay_us / 1e6)

    def before_writes_and_frees(self, *memory: object) -> None:
        """Pause before every K/V write and every free of these pools and allocators.

        Wraps the methods on the instances, so that every caller (the models, the radix cache's
        eviction, the fault injector) goes through the pause; a no-op with jitter off.
        """
        if not self.enabled:
            return
        for part in memory:
            for name in (*_WRITES, *_FREES):
                method = getattr(part, name, None)
                if callable(method):
                    setattr(part, name, self._paused(method))

    def _paused(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def paused(*args: Any, **kwargs: Any) -> Any:
            self.pause()
            return method(*args, **kwargs)

        return paused
