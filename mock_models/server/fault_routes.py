"""``POST /kv_canary/inject`` and ``GET /kv_canary/injections`` (docs/DESIGN.md, docs/FAULTS.md).

The body is the contract's ``Fault``. A body of the wrong shape (unknown key, wrong type, unknown
kind, a number out of bounds) is answered 422 by FastAPI with the location of each problem; a
well-shaped body the contract's rules refuse for this engine (two triggers, a target key the kind
does not take, an SWA target in mode mha, ...) is answered 400 with every problem in ``detail``.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from kv_canary_contract import Fault
from mock_models.engine.engine import Engine
from mock_models.faults.fault_request import FaultRequestError, resolve
from mock_models.faults.injector import FaultInjector
from mock_models.server.handoff import run_on_engine


def build_fault_router(injector: FaultInjector) -> APIRouter:
    router = APIRouter(prefix="/kv_canary")

    @router.post("/inject")
    async def inject(body: Fault, request: Request) -> dict:
        engine = injector.engine
        try:
            spec = resolve(body, engine.config, canary_installed=engine.canary is not None)
        except FaultRequestError as error:
            raise HTTPException(status_code=400, detail=f"cannot inject {body.kind}: {error}") from None

        def schedule(_engine: Engine) -> int:
            return injector.schedule(spec)

        return {"fault_id": await run_on_engine(request, schedule)}

    @router.get("/injections")
    async def injections(request: Request) -> dict:
        return {"injections": await run_on_engine(request, lambda _engine: injector.log.to_json())}

    return router
