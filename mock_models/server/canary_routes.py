"""``/kv_canary/*``: what the canary has seen. Fault injection adds its own router beside this one."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Request

from kv_canary import KvCanaryViolationError
from mock_models.engine.engine import Engine
from mock_models.server.handoff import run_on_engine

canary_router = APIRouter()


@canary_router.get("/violations")
async def violations(request: Request) -> dict:
    """Drain the canary (between forwards) and return every violation reported so far."""

    def collect(engine: Engine) -> dict:
        if engine.canary is None:
            return {"count": 0, "lines": [], "canary_enabled": False}
        # Mode raise: the rows were recorded before it raised, and are answered below.
        with contextlib.suppress(KvCanaryViolationError):
            engine.canary.flush()
        lines = [record.format() for record in engine.canary.violations]
        # Every violation ever recorded, ring rows that overflowed before a drain included.
        count = engine.canary.stats_snapshot()["violations_total"]
        return {"count": count, "lines": lines, "canary_enabled": True}

    return await run_on_engine(request, collect)


@canary_router.get("/stats")
async def stats(request: Request) -> dict:
    def snapshot(engine: Engine) -> dict:
        if engine.canary is None:
            return {"canary_enabled": False, "forward_count": engine.forward_count}
        return {"canary_enabled": True, "forward_count": engine.forward_count, **engine.canary.stats_snapshot()}

    return await run_on_engine(request, snapshot)
