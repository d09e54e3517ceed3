"""ASGI middleware in front of the routes: the request-body size and time limits, and the API key."""
from __future__ import annotations

import asyncio
import hmac
from typing import Optional

from starlette.responses import JSONResponse

from .protocol import APIError

BODY_READ_TIMEOUT = 15.0  # seconds a client may take between two parts of its request body


async def _answer(error: APIError, scope, receive, send) -> None:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    await JSONResponse(error.body(), status_code=error.status, headers=headers)(scope, receive, send)


class BodyLimit:
    """Answers 400 (an OpenAI-style invalid request) to a request whose body is over ``max_bytes``,
    and 408 to one whose body stalls for ``read_timeout`` seconds, before any route reads it.

    The body is read here (up to the limit) and replayed to the app; later
    ``receive`` calls (a client disconnect) pass through. A client that holds a half-sent
    body therefore holds a connection for ``read_timeout`` at most, and a request cancelled by
    the server's shutdown ends quietly.
    """

    def __init__(self, app, max_bytes: int, read_timeout: float = BODY_READ_TIMEOUT):
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            await self._limited(scope, receive, send)
        except asyncio.CancelledError:  # the server's shutdown grace is over: the request ends without a traceback
            return

    async def _limited(self, scope, receive, send):
        too_big = APIError(400, f"the request body is over the server's limit of {self.max_bytes} bytes")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _answer(too_big, scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except asyncio.TimeoutError:
                stalled = APIError(408, f"the request body stopped arriving for {self.read_timeout:g} s; send it whole")
                return await _answer(stalled, scope, receive, send)
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await _answer(too_big, scope, receive, send)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


class APIKey:
    """With a key, every ``/v1/`` route and the paths in ``also`` need ``Authorization: Bearer KEY``
    (else 401); the page and ``/health`` stay open."""

    def __init__(self, app, key: Optional[str], also: tuple = ()):
        self.app = app
        self.expected = f"Bearer {key}".encode() if key else None
        self.also = also

    async def __call__(self, scope, receive, send):
        if self.expected is not None and scope["type"] == "http" and \
                (scope["path"].startswith("/v1/") or scope["path"] in self.also):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                error = APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY' with the key the "
                                      "server was started with", code="invalid_api_key")
                return await _answer(error, scope, receive, send)
        await self.app(scope, receive, send)
