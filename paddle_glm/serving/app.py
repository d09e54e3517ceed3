"""The FastAPI app: ``/v1/completions``, ``/v1/fill``, ``/v1/models``, ``/health``, ``/metrics`` and the page
at ``/``."""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import List, Optional

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ..glm_layout import position_table
from ..tokenizer import with_mask
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import CountStatuses, ServerMetrics
from .middleware import APIKey, BodyLimit
from .protocol import (
    APIError,
    CompletionRequest,
    FillRequest,
    check_prompt_count,
    choice,
    completion_body,
    completion_id,
    parse,
    usage,
)
from .rows import Row, Sink
from .scheduler import FillJob, QueueFull

PAGE = Path(__file__).parent / "static" / "index.html"
DISCONNECT_POLL = 0.25  # seconds between checks that a non-streaming client is still there
CLIENT_GONE = 499  # nginx's "client closed request": the status of a response nobody will read
DEFAULT_MAX_BODY = 1 << 20


class Channel(Sink):
    """One request's events from the model thread, as an asyncio queue on the server's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()

    def _push(self, event: tuple) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: the server is shutting down
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def text(self, index: int, delta: str) -> None:
        self._push(("text", index, delta))

    def finish(self, index: int, reason: str, completion_tokens: int) -> None:
        self._push(("finish", index, reason, completion_tokens))

    def fail(self, status: int, message: str) -> None:
        self._push(("error", status, message))

    def fill_done(self, result, error) -> None:
        self._push(("fill", result, error))


def create_app(scheduler, model_name: str, api_key: Optional[str] = None, max_body_bytes: int = DEFAULT_MAX_BODY,
               metrics: Optional[ServerMetrics] = None, metrics_public: bool = False):
    """The ASGI app (for uvicorn) in front of ``scheduler``, whose model thread starts and stops with the app.

    Args:
        scheduler: the queue and model thread (static or continuous); its ``runner`` also validates
            prompt lengths.
        model_name: the id ``/v1/models`` shows.
        api_key: if given, ``/v1/`` (and ``/metrics``, unless ``metrics_public``) needs
            ``Authorization: Bearer api_key``.
        max_body_bytes: larger request bodies get 400.
        metrics: served at ``GET /metrics`` (Prometheus' text format); requests are counted by status.
    """
    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        yield
        scheduler.stop()

    app = FastAPI(title="paddle-glm serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)
    _add_info_routes(app, model_name)
    _add_completions(app, scheduler, model_name)
    _add_fill(app, scheduler, model_name)
    if metrics is None:
        return BodyLimit(APIKey(app, api_key), max_body_bytes)
    _add_metrics(app, metrics)
    return CountStatuses(BodyLimit(APIKey(app, api_key, also=() if metrics_public else ("/metrics",)),
                                   max_body_bytes), metrics)


def _add_metrics(app: FastAPI, metrics: ServerMetrics) -> None:
    """``GET /metrics``: Prometheus' text format (see :class:`~paddle_glm.serving.metrics.ServerMetrics`)."""
    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics.text(), media_type=METRICS_CONTENT_TYPE)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as OpenAI's ``{"error": {...}}`` body."""
    @app.exception_handler(APIError)
    async def api_error(request, error: APIError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        return JSONResponse(APIError(error.status_code, str(error.detail)).body(), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def server_error(request, error: Exception):
        body = APIError(500, f"internal error: {type(error).__name__}: {error}", type="server_error").body()
        return JSONResponse(body, status_code=500)


def _add_info_routes(app: FastAPI, model_name: str) -> None:
    """The page at ``/``, ``/health`` and ``/v1/models``."""
    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "paddle_glm"}]}


def _add_completions(app: FastAPI, scheduler, model_name: str) -> None:
    """``POST /v1/completions``: one row per prompt, streamed as server-sent events or answered whole."""
    @app.post("/v1/completions")
    async def completions(request: Request):
        body = parse(CompletionRequest, await request.body())
        channel = Channel(asyncio.get_running_loop())
        prompts = body.prompts()
        check_prompt_count(len(prompts), scheduler.max_queue)  # before tokenizing a list that can never fit
        rows = [_row(scheduler.runner, prompt, body, channel, i) for i, prompt in enumerate(prompts)]
        _submit(scheduler, rows)
        request_id = completion_id()
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(_events(rows, channel, request_id, model_name, include_usage),
                                     media_type="text/event-stream")
        texts, reasons, tokens = await _collect(rows, channel, request)
        choices = [choice(i, text, reason) for i, (text, reason) in enumerate(zip(texts, reasons))]
        return completion_body(request_id, model_name, choices,
                               usage(sum(r.prompt_tokens for r in rows), sum(tokens)))


async def _collect(rows: List[Row], channel: Channel, request: Request):
    """A non-streaming request's texts, finish reasons and completion tokens, one per row."""
    texts, reasons, tokens = [""] * len(rows), [None] * len(rows), [0] * len(rows)
    events = _events_while_connected(channel, request)
    try:
        while None in reasons:
            event = await events.__anext__()
            if event[0] == "error":
                raise _failure(event[1], event[2])
            if event[0] == "text":
                texts[event[1]] += event[2]
            else:
                reasons[event[1]], tokens[event[1]] = event[2], event[3]
    finally:
        _cancel_unfinished(rows, [reason is not None for reason in reasons])
    return texts, reasons, tokens


def _add_fill(app: FastAPI, scheduler, model_name: str) -> None:
    """``POST /v1/fill``: every blank of a text, filled in order by one job that runs alone."""
    @app.post("/v1/fill")
    async def fill(request: Request):
        body = parse(FillRequest, await request.body())
        channel = Channel(asyncio.get_running_loop())
        _check_lengths(scheduler.runner, scheduler.runner.prompt_tokens(body.text), body.max_tokens, "text")
        job = FillJob(body.text, body.max_tokens, body.sampling(), channel.fill_done)
        _submit(scheduler, [job])
        try:
            _, result, error = await _events_while_connected(channel, request).__anext__()
        finally:
            job.cancelled.set()
        if error is not None:
            raise _failure(*error, param="text")
        completed, spans, tokens = result
        return {"object": "fill", "model": model_name, "text": completed, "spans": spans,
                "usage": {"completion_tokens": tokens}}


def _row(runner, prompt: str, body: CompletionRequest, channel: Channel, index: int) -> Row:
    prompt = with_mask(prompt)
    prompt_tokens = runner.prompt_tokens(prompt)
    _check_lengths(runner, prompt_tokens, body.max_tokens, "prompt")
    return Row(prompt, prompt_tokens, body.max_tokens, body.stops(), body.sampling(), channel, index)


def _check_lengths(runner, prompt_tokens: int, max_tokens: int, param: str) -> None:
    """A row that can never fit is refused at once: the prompt (context + ``<|startofpiece|>``) and
    its span share the position table's rows (the KV cache has that many slots per row)."""
    rows = runner.position_rows
    if prompt_tokens + 1 > rows:
        raise APIError(400, f"the {param} alone is too long: {prompt_tokens} tokens do not fit "
                            f"{position_table(rows)}; shorten it", param)
    if prompt_tokens + max_tokens > rows:
        raise APIError(400, f"max_tokens: at most {rows - prompt_tokens} after this {prompt_tokens}-token {param} "
                            f"({position_table(rows)} holds both), got {max_tokens}", "max_tokens")


def _failure(status: int, message: str, param: Optional[str] = None) -> APIError:
    """The error of a failed batch or fill: the request's fault (400) or the server's (500)."""
    if status < 500:
        return APIError(status, message, param)
    return APIError(status, message, type="server_error")


def _submit(scheduler, jobs: list) -> None:
    try:
        scheduler.submit(jobs)
    except QueueFull as e:
        raise APIError(429, str(e), type="rate_limit_error", code="queue_full") from None


async def _events_while_connected(channel: Channel, request: Request):
    """A non-streaming request's events; checks every ``DISCONNECT_POLL`` s that the client is still there
    (if not, the request ends with a response nobody reads, and its rows are dropped by the caller)."""
    checked = time.monotonic()
    while True:
        if time.monotonic() - checked > DISCONNECT_POLL:
            if await request.is_disconnected():
                raise APIError(CLIENT_GONE, "the client closed the connection")
            checked = time.monotonic()
        try:
            yield await asyncio.wait_for(channel.queue.get(), DISCONNECT_POLL)
        except asyncio.TimeoutError:
            continue


async def _events(rows: List[Row], channel: Channel, request_id: str, model_name: str, include_usage: bool):
    """Server-sent events in OpenAI's chunk shape, ending with ``data: [DONE]``."""
    finished, tokens = [False] * len(rows), 0
    try:
        while not all(finished):
            event = await channel.queue.get()
            if event[0] == "error":
                yield _sse(_failure(event[1], event[2]).body())
                break
            if event[0] == "text":
                yield _sse(completion_body(request_id, model_name, [choice(event[1], event[2], None)], None, True))
            else:
                finished[event[1]] = True
                tokens += event[3]
                yield _sse(completion_body(request_id, model_name, [choice(event[1], "", event[2])], None, True))
        else:
            if include_usage:
                yield _sse(completion_body(request_id, model_name, [],
                                           usage(sum(r.prompt_tokens for r in rows), tokens), True))
        yield "data: [DONE]\n\n"
    finally:
        _cancel_unfinished(rows, finished)


def _cancel_unfinished(rows: List[Row], finished: List[bool]) -> None:
    """The request is over (answered, failed or its client went away): drop its rows still queued or running."""
    for row, done in zip(rows, finished):
        if not done:
            row.cancelled.set()


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
