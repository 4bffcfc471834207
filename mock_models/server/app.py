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
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from mock_models.engine.engine import CanaryRaisedError, Engine, InvalidRequestError
from mock_models.engine.request import GenerationResult
from mock_models.server.canary_routes import canary_router
from mock_models.server.engine_worker import EngineStoppedError, EngineWorker, RequestAbortedError
from mock_models.server.handoff import run_on_engine, worker_of
from mock_models.server.jitter_middleware import JitterMiddleware

DEFAULT_MAX_NEW_TOKENS = 128  # SGLang's default


class SamplingParams(BaseModel):
    # Strict: "8", 8.0 or true is a malformed body (422), not a value to coerce.
    max_new_tokens: StrictInt = DEFAULT_MAX_NEW_TOKENS  # other SGLang sampling fields are accepted and ignored


class GenerateRequest(BaseModel):
    input_ids: list[StrictInt] = Field(description="prompt token ids; the mock server does not tokenize text")
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)
    rid: StrictStr | None = Field(None, min_length=1, description="names the request for /abort_request")


class AbortRequest(BaseModel):
    rid: StrictStr = ""  # SGLang's AbortReq: a request id, or abort_all
    abort_all: StrictBool = False


core_router = APIRouter()


@core_router.post("/generate", response_model=None)
async def generate(body: GenerateRequest, request: Request) -> dict[str, object] | JSONResponse:
    worker = worker_of(request)
    max_new_tokens = body.sampling_params.max_new_tokens
    rid = body.rid or uuid.uuid4().hex
    if worker.is_pending(rid):
        raise HTTPException(status_code=400, detail=f"rid {rid!r} names a request that is still running; use another")
    try:
        result: GenerationResult = await _unless_client_leaves(
            request,
            asyncio.wrap_future(worker.generate(body.input_ids, max_new_tokens, rid=rid)),
            on_leave=lambda: worker.abort(rid),
        )
    except ClientDisconnected:
        # Nobody reads this answer; 499 (client closed request) names what happened in access logs.
        return JSONResponse(status_code=499, content={"detail": "client disconnected; request aborted"})
    except InvalidRequestError as error:
        raise HTTPException(status_code=400, detail=str(error)) from None
    except EngineStoppedError as error:
        raise HTTPException(status_code=503, detail=str(error)) from None
    except CanaryRaisedError as error:  # canary mode raise
        raise HTTPException(status_code=500, detail={"error": "kv_canary violation", "lines": error.lines}) from None
    except RequestAbortedError as aborted:  # by /abort_request: answered as SGLang does, 200 with finish_reason abort
        return {
            "output_ids": list(aborted.output_ids),
            "meta_info": {
                "id": rid,
                "completion_tokens": len(aborted.output_ids),
                "finish_reason": {"type": "abort", "message": "aborted by /abort_request"},
            },
        }
    checksum = result.attention_checksum
    return {
        "output_ids": list(result.output_ids),
        "meta_info": {
            "id": result.rid,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "cached_tokens": result.cached_tokens,
            "finish_reason": {"type": result.finish_reason, "length": result.completion_tokens},
            # JSON has no NaN/inf; corrupted K/V can produce them, so those go as strings.
            "attention_checksum": _number(checksum),
            "e2e_latency": result.e2e_latency,
            # Per output token: the forward that sampled it, and the digest of the hidden state it was
            # sampled from (the tokens come from the token oracle; the digests show a corrupted read).
            "output_steps": list(result.output_steps),
            "output_digests": [_number(digest) for digest in result.output_digests],
        },
    }


def _number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


@core_router.post("/abort_request")
async def abort_request(body: AbortRequest, request: Request) -> dict:
    """SGLang's abort: drop the request named ``rid`` (or all with ``abort_all``) between two forwards;
    its /generate answers 200 with finish_reason abort. ``aborted`` counts the requests still pending."""
    worker = worker_of(request)
    if not body.abort_all and not body.rid:
        raise HTTPException(status_code=400, detail="name the request to abort (rid), or set abort_all")
    try:
        future = worker.abort_all() if body.abort_all else worker.abort(body.rid)
        aborted = await asyncio.wrap_future(future)
    except EngineStoppedError as error:
        raise HTTPException(status_code=503, detail=str(error)) from None
    return {"success": True, "aborted": int(aborted)}


class ClientDisconnected(Exception):
    """The client closed its connection before the answer was ready."""


async def _unless_client_leaves(
    request: Request, answer: asyncio.Future[Any], *, on_leave: Callable[[], object]
) -> Any:
    """Await ``answer``; if the client disconnects first, call ``on_leave()`` and raise ClientDisconnected."""
    left = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({answer, left}, return_when=asyncio.FIRST_COMPLETED)
        if answer in done:
            return answer.result()
        on_leave()
        answer.add_done_callback(_consume)  # it fails with RequestAbortedError, which nobody reads
        raise ClientDisconnected()
    finally:
        left.cancel()


async def _disconnected(request: Request) -> None:
    """Return once the client has gone. The body was read already, so the next message is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _consume(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


@core_router.get("/health")
async def health(request: Request) -> JSONResponse:
    worker = worker_of(request)
    if not worker.is_alive:
        return JSONResponse({"status": "unavailable", "detail": worker.stopped_reason}, status_code=503)
    stuck = worker.stuck()
    if stuck is not None:
        return JSONResponse({"status": "stuck", "detail": stuck}, status_code=503)
    return JSONResponse({"status": "ok"})


@core_router.post("/flush_cache")
async def flush_cache(request: Request) -> JSONResponse:
    def flush(engine: Engine) -> tuple[bool, int, int]:
        return engine.flush_cache(), engine.num_running, engine.num_waiting

    flushed, running, waiting = await run_on_engine(request, flush)
    if not flushed:
        return JSONResponse(
            status_code=409,
            content={
                "success": False,
                "message": f"not flushed: {running} requests running and {waiting} waiting; "
                "the radix cache can only be flushed when the engine is idle, retry then",
            },
        )
    return JSONResponse({"success": True, "message": "Cache flushed."})


@core_router.get("/get_server_info")
async def get_server_info(request: Request) -> dict:
    engine = worker_of(request).engine
    config = engine.config
    return {
        "model_mode": config.model_mode.value,
        "device": config.device,
        "page_size": config.page_size,
        "max_total_tokens": config.max_total_tokens,
        "swa_window": config.swa_window if config.has_swa_pool else None,
        "swa_max_total_tokens": config.swa_pool_size if config.has_swa_pool else None,
        "max_running_requests": config.max_running_requests,
        "chunked_prefill_size": config.chunked_prefill_size,
        "max_context_len": config.max_context_len,
        "vocab_size": config.vocab_size,
        "seed": config.seed,
        "tp": config.tp,
        "pp": config.pp,
        # The processes of ranks 1.. (rank 0 is this one), for whoever checks they stop with it.
        "rank_pids": engine.rank_group.worker_pids if engine.rank_group is not None else [],
        "overlap_schedule": config.overlap_schedule,
        "new_token_ratio": config.new_token_ratio,
        "bugs": list(config.bugs),
        "forward_count": engine.forward_count,  # an int read across threads: at worst one step stale
        "canary": _plain(dataclasses.asdict(engine.canary_config)),
    }


def _plain(values: dict) -> dict:
    return {key: value.value if isinstance(value, enum.Enum) else value for key, value in values.items()}


async def _malformed_body(request: Request, error: Exception) -> JSONResponse:
    """422 with pydantic's location of each problem, as FastAPI answers, but always encodable.

    Python's JSON parser accepts NaN and Infinity, and FastAPI echoes the offending input back;
    JSON has no such numbers, so the default handler failed with a 500. Non-finite floats go as strings.
    """
    assert isinstance(error, RequestValidationError), "registered for RequestValidationError only"
    return JSONResponse(status_code=422, content={"detail": _finite(jsonable_encoder(error.errors()))})


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


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
    app.add_exception_handler(RequestValidationError, _malformed_body)
    config = worker.engine.config
    if config.jitter_max_us:
        app.add_middleware(JitterMiddleware, max_us=config.jitter_max_us, seed=f"{config.jitter_seed}/http")
    app.state.worker = worker
    app.include_router(core_router)
    app.include_router(canary_router, prefix="/kv_canary")
    for router in extra_routers:
        app.include_router(router)
    return app
