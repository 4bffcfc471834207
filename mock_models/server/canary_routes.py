"""``/kv_canary/*``: what the canary has seen. Fault injection adds its own router beside this one."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Request

from kv_canary import KvCanaryViolationError
from mock_models.engine.engine import Engine
from mock_models.engine.ranks.jobs import CanaryDrain, drain_canary
from mock_models.server.handoff import run_on_engine

canary_router = APIRouter()


@canary_router.get("/violations")
async def violations(request: Request) -> dict:
    """Drain the canary of every rank (between forwards) and return every violation reported so far."""

    def collect(engine: Engine) -> dict:
        canaries = engine.canaries  # an engine of several model runners (disaggregation) has several
        if not canaries:
            return {"count": 0, "lines": [], "canary_enabled": False}
        if engine.config.ranks > 1:  # every rank's canary, drained in its own process
            drains = [drain for drain in engine.on_ranks(drain_canary) if isinstance(drain, CanaryDrain)]
            return {
                # Every violation ever recorded, ring rows that overflowed before a drain included.
                "count": sum(drain.count for drain in drains),
                "lines": [line for drain in drains for line in drain.lines],
                "canary_enabled": True,
                "count_by_rank": [drain.count for drain in drains],
            }
        lines: list[str] = []
        count = 0
        for canary in canaries:
            # Mode raise: the rows were recorded before it raised, and are answered below.
            with contextlib.suppress(KvCanaryViolationError):
                canary.flush()
            lines += [record.format() for record in canary.violations]
            # Every violation ever recorded, ring rows that overflowed before a drain included.
            total = canary.stats_snapshot()["violations_total"]
            assert isinstance(total, int)  # CanaryManager.stats_snapshot
            count += total
        return {"count": count, "lines": lines, "canary_enabled": True}

    return await run_on_engine(request, collect)


@canary_router.get("/stats")
async def stats(request: Request) -> dict:
    def snapshot(engine: Engine) -> dict:
        if engine.canary is None:
            return {"canary_enabled": False, "forward_count": engine.forward_count}
        return {"canary_enabled": True, "forward_count": engine.forward_count, **engine.canary.stats_snapshot()}

    return await run_on_engine(request, snapshot)
