"""Every ``sweep_interval`` forwards, verify the next slice of the radix cache: read by a request or not.

Per-forward verification only covers what running requests read. A cached prefix no request
holds (idle, unlocked) is read again only when a later request matches it, possibly long after
its slot was freed and reused or its bytes were overwritten. The sweep closes that gap: it walks
the cache attached with ``manager.attach_prefix_cache`` and verifies, per pool group and K/V
half, the HEAD records (no real K/V: HEAD records carry none) and the TAIL records (with the
half's real-K/V hash) of every cached slot under the half's ``SWEEP_*`` launch tag. Violations
go to the same device ring and reach the log through the violation reporter.

A step lists the next nodes of its round (``radix_cursor``: at most ``sweep_step_nodes`` nodes
and ``sweep_step_tokens`` tokens) and verifies them in one launch at once, so the host time of a
step stays bounded however large the cache, and a round covers the cache in about
``nodes / sweep_step_nodes`` steps. A self-walking cache (SGLang's Rust tree core, whose nodes
are not Python objects) is walked whole at every step instead. ``passes`` counts completed rounds.

The kernels are launched even for an empty slice, so the health checker sees the sweep run.
"""

from __future__ import annotations

import logging
import typing
from typing import TYPE_CHECKING

from kv_canary.engine_protocols import RadixTree, SelfWalkingCache
from kv_canary.launch_tags import PoolGroupKind
from kv_canary.plans import SweepSlice
from kv_canary.sweep.radix_cursor import RadixCursor

if TYPE_CHECKING:
    from kv_canary.manager import CanaryManager


class SweepOrchestrator:
    def __init__(self, *, manager: CanaryManager) -> None:
        config = manager.config
        if config.sweep_interval < 1:
            raise ValueError("SweepOrchestrator needs sweep_interval >= 1 (0 means: do not build one)")
        self._manager = manager
        self._interval = config.sweep_interval
        self._max_nodes = config.sweep_step_nodes
        self._max_tokens = config.sweep_step_tokens
        self._cursor = RadixCursor(device=manager.device)
        self._kinds = {group.kind for group in manager.groups}
        self.passes = 0  # completed rounds
        self.steps = 0

    def step(self, forward_count: int) -> None:
        if self._manager.prefix_cache is None or forward_count % self._interval:
            return
        self.run_step()

    def flush(self) -> None:
        """Nothing is staged here: the sweep's violations are in the ring the reporter drains."""

    def run_step(self) -> None:
        """List the next slice of the round and verify it now (it must not wait: slots may be freed)."""
        manager = self._manager
        cache = manager.prefix_cache
        if isinstance(cache, SelfWalkingCache):
            # SWA groups skip tombstoned nodes, whose SWA mapping entries may be stale.
            walks = {
                kind: cache.radix_walk(
                    device=manager.device, unlocked_only=False, swa_resident_only=kind is PoolGroupKind.SWA
                )
                for kind in self._kinds
            }
            sweep = SweepSlice(walk=walks.get(PoolGroupKind.FULL), swa_walk=walks.get(PoolGroupKind.SWA))
            completed = True
        else:
            listed = self._cursor.next_slice(
                _as_radix_cache(cache), max_nodes=self._max_nodes, max_tokens=self._max_tokens
            )
            sweep, completed = SweepSlice(segments=listed.segments), listed.round_completed
        manager.kernels.sweep.verify(sweep, verify=manager.kernels.verify)
        self.steps += 1
        self.passes += int(completed)
        # DEBUG only: a step runs every few forwards, far too often for INFO.
        if manager.logger.isEnabledFor(logging.DEBUG):
            manager.logger.debug(
                "kv_canary sweep pass=%d step=%d cached_tokens=%d pass_completed=%s",
                self.passes + int(not completed),
                self.steps,
                sweep.num_tokens,
                completed,
            )


def _as_radix_cache(cache: object) -> RadixTree:
    if not hasattr(cache, "root_node"):
        raise TypeError(
            f"kv_canary: the attached prefix cache {type(cache).__qualname__} has neither root_node (a radix "
            "tree the sweep walks) nor radix_walk() (a cache that walks itself); see sweep/radix_cursor.py"
        )
    return typing.cast(RadixTree, cache)
