"""The HTTP service of ``elmo serve``: a FastAPI application around one :class:`Batcher`.

``POST /v1/embed`` takes ``{"sentences": [...]}`` (the hub module's ``default``
signature: split on spaces) or ``{"tokens": [[...], ...]}``, ``"layers"`` and an optional
``"pool": "mean"``, and answers JSON, or a binary body with ``Accept: application/x-npy``
or ``Accept: application/vnd.apache.arrow.stream`` (:mod:`elmo.serve.formats`).
``GET /healthz``, ``/readyz``, ``/v1/model`` and ``/metrics`` tell whether it lives,
whether it takes work, what model it runs, and how it has been doing. The OpenAPI
schema is at ``/openapi.json``, rendered at ``/docs``.

Every refusal is a JSON body ``{"error": {"status", "message", ...}}`` whose one-line
message names the field or the limit: 413 for a body, a request or a sentence over a
limit, 422 for a body that is not the request described, 429 (with ``Retry-After``) when
the queue is full, 503 while shutting down.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from elmo import __version__
from elmo.choices import Layers
from elmo.commands.info import model_facts
from elmo.inputs import split_sentences
from elmo.module import ElmoModule
from elmo.serve.batcher import Batcher, BatcherStopped, QueueFull
from elmo.serve.formats import (
    ARROW_LAYOUT,
    ARROW_TYPE,
    JSON_TYPE,
    NPY_LAYOUT,
    NPY_TYPE,
    encode_arrow,
    encode_json,
    encode_npy,
    negotiate,
)
from elmo.serve.metrics import LATENCY_BUCKETS, Counter, Gauge, Histogram, Registry

__all__ = ["EmbedRequest", "ServeSettings", "app_from_environment", "create_app"]

# Binary answers up to this size are written on the event loop (a copy or two, well under
# a millisecond); larger ones, and every JSON answer, on a worker thread.
INLINE_BINARY_BYTES = 1 << 20
# The environment variable that carries the settings to worker processes (--workers K).
ENVIRONMENT = "ELMO_SERVE_CONFIG"


@dataclass(frozen=True)
class ServeSettings:
    """The limits of the service (the ``elmo serve`` options of the same names)."""

    max_batch_tokens: int = 16384
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_body_bytes: int = 1 << 20
    max_sentences: int = 256
    max_tokens: int = 512

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            low = 0 if name == "max_wait_ms" else 1
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
                raise ValueError(f"--{name.replace('_', '-')}: expected a number >= {low}, found {value!r}")


class EmbedRequest(BaseModel):
    """The body of ``POST /v1/embed``: exactly one of ``sentences`` and ``tokens``."""

    model_config = ConfigDict(extra="forbid")

    sentences: list[StrictStr] | None = Field(
        None, description="sentence strings, split on spaces (the hub module's default signature)"
    )
    tokens: list[list[StrictStr]] | None = Field(
        None, description="sentences as token lists (the tokens signature), used as given"
    )
    layers: Literal["elmo", "top", "average", "all", "word_emb", "default"] = Field(
        "elmo",
        description="per sentence: elmo, top, average [n, D]; all [L, n, D]; word_emb [n, P]; "
        "default [D] (the mean of elmo)",
    )
    pool: Literal["mean"] | None = Field(
        None, description="mean: the mean over each sentence's tokens (not with layers=default)"
    )


class EmbedResponse(BaseModel):
    """The JSON answer of ``POST /v1/embed``."""

    layers: str
    pool: str | None
    lengths: list[int] = Field(description="tokens per sentence")
    embeddings: list[Any] = Field(description="one nested list per sentence, of the shape layers gives")


class _Refusal(Exception):
    """A request the service declines: the status and the JSON error's fields."""

    def __init__(self, status: int, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.status, self.fields = status, fields


def _error(status: int, message: str, headers: dict[str, str] | None = None, **fields: Any) -> JSONResponse:
    body = {"error": {"status": status, "message": message, **fields}}
    return JSONResponse(body, status_code=status, headers=headers)


def _field_name(loc: tuple[Any, ...]) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


def _validation_refusal(e: ValidationError) -> _Refusal:
    first = e.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return _Refusal(422, f"the body is not valid JSON: {first['msg']}", field="body")
    field = _field_name(tuple(first["loc"]))
    if first["type"] == "extra_forbidden":
        known = ", ".join(EmbedRequest.model_fields)
        return _Refusal(422, f"{field}: unknown field (expected {known})", field=field)
    if not field:
        return _Refusal(422, f"the body: {first['msg']} (expected a JSON object)", field="body")
    return _Refusal(422, f"{field}: {first['msg']}", field=field)


def _limit(field: str, limit: str, allowed: int, found: int, what: str) -> _Refusal:
    return _Refusal(
        413,
        f"{field}: {found} {what}, over the limit of {allowed} (--{limit.replace('_', '-')})",
        field=field,
        limit=limit,
        allowed=allowed,
        found=found,
    )


def parse_request(
    body: bytes, settings: ServeSettings
) -> tuple[list[list[str]], Layers, Literal["mean"] | None]:
    """The token lists, layers and pooling of a ``POST /v1/embed`` body; raises
    :class:`_Refusal` (413 or 422) naming the field or the limit."""
    try:
        req = EmbedRequest.model_validate_json(body)
    except ValidationError as e:
        raise _validation_refusal(e) from None
    if (req.sentences is None) == (req.tokens is None):
        both = "both" if req.sentences is not None else "neither"
        raise _Refusal(
            422, f"sentences, tokens: expected exactly one of them, found {both}", field="sentences"
        )
    field = "sentences" if req.sentences is not None else "tokens"
    items: list[Any] = req.sentences if req.sentences is not None else req.tokens  # type: ignore[assignment]
    if not items:
        raise _Refusal(422, f"{field}: expected at least one sentence, found an empty list", field=field)
    if len(items) > settings.max_sentences:
        raise _limit(field, "max_sentences", settings.max_sentences, len(items), "sentences")
    batch = split_sentences(items) if req.sentences is not None else [list(t) for t in items]
    for i, sentence in enumerate(batch):
        if not sentence:
            what = "an empty list" if req.tokens is not None else "no tokens (empty or only spaces)"
            raise _Refusal(
                422, f"{field}[{i}]: expected at least one token, found {what}", field=f"{field}[{i}]"
            )
        if len(sentence) > settings.max_tokens:
            raise _limit(f"{field}[{i}]", "max_tokens", settings.max_tokens, len(sentence), "tokens")
    if req.pool is not None and req.layers == "default":
        raise _Refusal(422, "pool: layers=default is already one vector per sentence", field="pool")
    return batch, req.layers, req.pool


async def _disconnected(receive: Callable[[], Awaitable[MutableMapping[str, Any]]]) -> None:
    """Return when the client goes away (the body has been read, so only that is left)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class _Counting:
    """ASGI middleware: requests by path and status code, and the latency of answered embeddings."""

    def __init__(self, app: Any, requests: Counter, latency: Histogram) -> None:
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"] if scope["path"] in _PATHS else "other"
            self.requests.inc(1, path, str(status))
            if path == "/v1/embed" and status == 200:
                self.latency.observe(time.perf_counter() - started)


_PATHS = ("/v1/embed", "/v1/model", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")


def create_app(module: ElmoModule, settings: ServeSettings | None = None, *, model_name: str = "") -> FastAPI:
    """The service for ``module`` (its batcher starts and stops with the application)."""
    settings = settings or ServeSettings()
    batcher = Batcher(
        module,
        max_batch_tokens=settings.max_batch_tokens,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
    )
    facts = model_facts(module)
    facts.update(
        {
            "model": model_name,
            "engine": "fast" if module.uses_fast_engine() else "plain",
            "precision": module.precision,
            "limits": asdict(settings),
            "pid": os.getpid(),
        }
    )
    registry = Registry()
    requests = Counter("elmo_http_requests_total", "HTTP requests by path and status code.", ("path", "code"))
    latency = Histogram("elmo_request_latency_seconds", "Latency of POST /v1/embed.", LATENCY_BUCKETS)
    rejected = Counter(
        "elmo_requests_rejected_total", "Requests refused with 429 because the queue was full."
    )
    for series in (requests, latency, rejected):
        registry.add(series)
    registry.add(Gauge("elmo_queue_depth", "Requests waiting for a batch.", lambda: batcher.queue_depth))
    registry.add(Gauge("elmo_queue_tokens", "Tokens of the requests waiting.", lambda: batcher.queued_tokens))
    registry.add(Gauge("elmo_queue_limit", "The --max-queue limit.", lambda: batcher.max_queue))
    registry.add(
        Gauge(
            "elmo_tokens_per_second",
            "Tokens embedded per second over the last 10 s.",
            batcher.throughput.rate,
        )
    )
    for series in (
        batcher.batch_requests,
        batcher.batch_sentences,
        batcher.batch_tokens,
        batcher.tokens_total,
        batcher.sentences_total,
        batcher.inference_seconds,
        batcher.cancelled_total,
    ):
        registry.add(series)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        # The server has finished its requests (uvicorn's graceful shutdown) before this.
        await run_in_threadpool(batcher.stop)

    app = FastAPI(
        title="elmo serve",
        description="ELMo embeddings over HTTP; requests are merged into batches across clients.",
        version=__version__,
        lifespan=lifespan,
    )
    app.state.batcher = batcher

    app.add_middleware(_Counting, requests=requests, latency=latency)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded and the queue has room", responses={503: {}})
    async def readyz() -> JSONResponse:
        if batcher.stopping:
            return _error(503, "shutting down")
        if batcher.full():
            return _error(503, f"the queue is full ({batcher.max_queue} requests, --max-queue)")
        return JSONResponse({"status": "ready", "queue_depth": batcher.queue_depth})

    @app.get("/v1/model", summary="The model's options, size and outputs (as elmo info --json)")
    async def model() -> dict[str, Any]:
        return facts

    @app.get("/metrics", summary="Prometheus text format", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(registry.render(), media_type="text/plain; version=0.0.4")

    error_schema = {"application/json": {"example": {"error": {"status": 413, "message": "..."}}}}

    @app.post(
        "/v1/embed",
        summary="Embed sentences or token lists",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": EmbedRequest.model_json_schema()}},
            }
        },
        responses={
            200: {
                "description": f"JSON (the default); with Accept: {NPY_TYPE}: {NPY_LAYOUT} "
                f"With Accept: {ARROW_TYPE}: {ARROW_LAYOUT}",
                "content": {
                    JSON_TYPE: {"schema": EmbedResponse.model_json_schema()},
                    NPY_TYPE: {"schema": {"type": "string", "format": "binary"}},
                    ARROW_TYPE: {"schema": {"type": "string", "format": "binary"}},
                },
            },
            413: {
                "description": "the body, the sentences or a sentence over a limit",
                "content": error_schema,
            },
            422: {"description": "not the request described (names the field)", "content": error_schema},
            429: {"description": "the queue is full; see Retry-After", "content": error_schema},
            503: {"description": "shutting down", "content": error_schema},
        },
    )
    async def embed(request: Request) -> Response:
        try:
            body = await _read_body(request, settings.max_body_bytes)
            batch, layers, pool = parse_request(body, settings)
        except _Refusal as e:
            return _error(e.status, str(e), **e.fields)
        try:
            future = batcher.submit(batch, layers, pool)
        except QueueFull as e:
            rejected.inc()
            return _error(429, str(e), headers={"Retry-After": str(e.retry_after)}, limit="max_queue")
        except BatcherStopped as e:
            return _error(503, str(e))
        waiting: asyncio.Future[list[np.ndarray]] = asyncio.wrap_future(future)
        gone: asyncio.Future[Any] = asyncio.ensure_future(_disconnected(request.receive))
        pair: list[asyncio.Future[Any]] = [waiting, gone]
        done, _ = await asyncio.wait(pair, return_when=asyncio.FIRST_COMPLETED)
        if waiting not in done:
            waiting.cancel()  # cancels the queued request too; its result is dropped if it runs
            return Response(status_code=499)  # nobody reads it
        gone.cancel()
        try:
            arrays = waiting.result()
        except Exception as e:
            return _error(500, f"the model failed on this batch: {type(e).__name__}: {e}")
        lengths = [len(s) for s in batch]
        pooled = pool is not None or layers == "default"
        answer = negotiate(request.headers.get("accept", ""))
        if answer == "json":
            data = await run_in_threadpool(encode_json, arrays, lengths, layers, pool)
            return Response(data, media_type=JSON_TYPE)
        encode: Callable[[], bytes] = (
            partial(encode_npy, arrays, lengths, pooled)
            if answer == "npy"
            else partial(encode_arrow, arrays, lengths, layers, pool, pooled)
        )
        if sum(a.nbytes for a in arrays) <= INLINE_BINARY_BYTES:
            data = encode()  # a copy or two: cheaper than a thread hop
        else:
            data = await run_in_threadpool(encode)
        return Response(data, media_type=NPY_TYPE if answer == "npy" else ARROW_TYPE)

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _limit("body", "max_body_bytes", limit, int(declared), "bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _limit("body", "max_body_bytes", limit, len(body), "bytes or more")
    return bytes(body)


def app_from_environment() -> FastAPI:
    """The application of one worker process of ``elmo serve --workers K``: the model and
    settings come from the ``ELMO_SERVE_CONFIG`` environment variable, which
    :mod:`elmo.commands.serve` sets (JSON: ``source``, ``engine``, ``settings``, ``threads``)."""
    import torch

    import elmo

    config = json.loads(os.environ[ENVIRONMENT])
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    module = elmo.load(*config["source"], progress=False, **config["engine"])
    return create_app(module, ServeSettings(**config["settings"]), model_name=config.get("name", ""))
