"""How a handler reaches the engine: through the app's EngineWorker, never directly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Request

from mock_models.engine.engine import Engine
from mock_models.server.engine_worker import EngineStoppedError, EngineWorker


def worker_of(request: Request) -> EngineWorker:
    return request.app.state.worker


async def run_on_engine(request: Request, job: Callable[[Engine], Any]) -> Any:
    """Run ``job(engine)`` on the engine thread between forwards; 503 once the engine has stopped."""
    try:
        return await asyncio.wrap_future(worker_of(request).call(job))
    except EngineStoppedError as error:
        raise HTTPException(status_code=503, detail=str(error)) from None
