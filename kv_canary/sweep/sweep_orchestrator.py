"""Every ``sweep_interval`` forwards, verify every slot the radix cache holds, read by a request or not.

Per-forward verification only covers what running requests read. A cached prefix no request
holds (idle, unlocked) is read again only when a later request matches it, possibly long after
its slot was freed and reused or its bytes were overwritten. The sweep closes that gap: it walks
the cache attached with ``manager.attach_prefix_cache`` and, per pool group and K/V half,
verifies the HEAD records (no real K/V: HEAD records carry none) and the TAIL records (with the
half's real-K/V hash) of every cached slot under the half's ``SWEEP_*`` launch tag. Violations
go to the same device ring and reach the log through the violation reporter.

The kernels are launched even when the cache is empty, so the health checker sees the sweep run.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kv_canary.engine_protocols import RadixWalk
from kv_canary.launch_tags import Phase, PoolGroupKind
from kv_canary.sweep.radix_walker import walk_radix_cache
from kv_canary.sweep.sweep_plan import build_sweep_plan

if TYPE_CHECKING:
    from kv_canary.manager import CanaryManager


class SweepOrchestrator:
    def __init__(self, *, manager: CanaryManager) -> None:
        if manager.config.sweep_interval < 1:
            raise ValueError("SweepOrchestrator needs sweep_interval >= 1 (0 means: do not build one)")
        self._manager = manager
        self._interval = manager.config.sweep_interval
        self.passes = 0

    def step(self, forward_count: int) -> None:
        if self._manager.prefix_cache is None or forward_count % self._interval:
            return
        self.run_pass()

    def flush(self) -> None:
        """Nothing is staged here: the sweep's violations are in the ring the reporter drains."""

    def run_pass(self) -> None:
        manager, config = self._manager, self._manager.config
        walks: dict[bool, RadixWalk] = {}
        for group in manager.groups:
            # SWA groups skip tombstoned nodes: their mapping entries may be stale.
            swa = group.kind is PoolGroupKind.SWA
            if swa not in walks:
                walks[swa] = walk_radix_cache(manager.prefix_cache, device=manager.device, swa_resident_only=swa)
            walk = walks[swa]
            plan = build_sweep_plan(walk, group)
            for half, buffers in group.halves.items():
                for phase, real_kv in ((Phase.HEAD, None), (Phase.TAIL, buffers.real_kv)):
                    manager.kernels.verify(
                        records=group.records(phase, half),
                        plan=plan,
                        launch_tag=group.launch_tag(Phase.SWEEP, half),
                        state=manager.state,
                        real_kv=real_kv,
                        check_tokens=config.verify_tokens,
                        record_violations=not config.self_test_disable_verify,
                        num_entries=walk.num_tokens,
                    )
        self.passes += 1
        # DEBUG only: a pass runs every few forwards, far too often for INFO.
        if manager.logger.isEnabledFor(logging.DEBUG):
            manager.logger.debug(
                "kv_canary sweep pass=%d cached_tokens=%s",
                self.passes,
                {("swa" if swa else "full"): walk.num_tokens for swa, walk in walks.items()},
            )
