"""The FastAPI app: an SGLang-compatible subset (generate, health, flush_cache, get_server_info).

Handlers reach the engine only through ``request.app.state.worker`` (an EngineWorker), so a
router added later (``/kv_canary/inject``) gets the same access: pass it in ``extra_routers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import math
from collections.abc import AsyncIterator, Sequence

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from mock_models.engine.engine import CanaryRaisedError, Engine, InvalidRequestError
from mock_models.server.canary_routes import canary_router
from mock_models.server.engine_worker import EngineStoppedError, EngineWorker
from mock_models.server.handoff import run_on_engine, worker_of

DEFAULT_MAX_NEW_TOKENS = 128  # SGLang's default


class SamplingParams(BaseModel):
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS  # other SGLang sampling fields are accepted and ignored


class GenerateRequest(BaseModel):
    input_ids: list[int] = Field(description="prompt token ids; the mock server does not tokenize text")
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)


core_router = APIRouter()


@core_router.post("/generate")
async def generate(body: GenerateRequest, request: Request) -> dict:
    worker = worker_of(request)
    max_new_tokens = body.sampling_params.max_new_tokens
    try:
        future = worker.generate(body.input_ids, max_new_tokens)
        result = await asyncio.wrap_future(future)
    except InvalidRequestError as error:
        raise HTTPException(status_code=400, detail=str(error)) from None
    except EngineStoppedError as error:
        raise HTTPException(status_code=503, detail=str(error)) from None
    except CanaryRaisedError as error:  # canary mode raise
        raise HTTPException(status_code=500, detail={"error": "kv_canary violation", "lines": error.lines}) from None
    checksum = result.attention_checksum
    return {"output_ids": list(result.output_ids),
            "meta_info": {"id": result.rid, "prompt_tokens": result.prompt_tokens,
                          "completion_tokens": result.completion_tokens, "cached_tokens": result.cached_tokens,
                          "finish_reason": {"type": result.finish_reason, "length": result.completion_tokens},
                          # JSON has no NaN/inf; corrupted K/V can produce them, so those go as strings.
                          "attention_checksum": checksum if math.isfinite(checksum) else str(checksum),
                          "e2e_latency": result.e2e_latency}}


@core_router.get("/health")
async def health(request: Request) -> JSONResponse:
    worker = worker_of(request)
    if worker.is_alive:
        return JSONResponse({"status": "ok"})
    return JSONResponse({"status": "unavailable", "detail": worker.stopped_reason}, status_code=503)


@core_router.post("/flush_cache")
async def flush_cache(request: Request) -> JSONResponse:
    def flush(engine: Engine) -> tuple[bool, int, int]:
        return engine.flush_cache(), engine.num_running, engine.num_waiting

    flushed, running, waiting = await run_on_engine(request, flush)
    if not flushed:
        return JSONResponse(status_code=409, content={
            "success": False, "message": f"not flushed: {running} requests running and {waiting} waiting; "
                                         "the radix cache can only be flushed when the engine is idle, retry then"})
    return JSONResponse({"success": True, "message": "Cache flushed."})


@core_router.get("/get_server_info")
async def get_server_info(request: Request) -> dict:
    engine = worker_of(request).engine
    config = engine.config
    return {"model_mode": config.model_mode.value, "device": config.device, "page_size": config.page_size,
            "max_total_tokens": config.max_total_tokens,
            "swa_window": config.swa_window if config.has_swa_pool else None,
            "swa_max_total_tokens": config.swa_pool_size if config.has_swa_pool else None,
            "max_running_requests": config.max_running_requests,
            "chunked_prefill_size": config.chunked_prefill_size, "max_context_len": config.max_context_len,
            "vocab_size": config.vocab_size, "seed": config.seed,
            "forward_count": engine.forward_count,  # an int read across threads: at worst one step stale
            "canary": _plain(dataclasses.asdict(engine.canary_config))}


def _plain(values: dict) -> dict:
    return {key: value.value if isinstance(value, enum.Enum) else value for key, value in values.items()}


def create_app(worker: EngineWorker, *, extra_routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The app; its lifespan starts the engine thread and stops it (failing what is pending with 503)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.stop)

    app = FastAPI(title="kv-canary mock server", lifespan=lifespan)
    app.state.worker = worker
    app.include_router(core_router)
    app.include_router(canary_router, prefix="/kv_canary")
    for router in extra_routers:
        app.include_router(router)
    return app
