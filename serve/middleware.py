"""The ASGI middleware around the app: read each body whole within a bound and a deadline, and measure every request."""

from __future__ import annotations

import asyncio
import time

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.metrics import Metrics

PATHS = frozenset(
    {"/healthz", "/readyz", "/v1/route", "/v1/feedback", "/v1/chat/completions", "/v1/spend", "/v1/savings", "/metrics"}
)
"""The endpoints measured by name; any other path is counted as ``other``."""


class BodyReader:
    """Read each request body whole before the app sees it: over ``max_bytes`` is a 413 (declared or not),
    not arrived within ``timeout`` seconds a 408 (a client that declares more than it sends cannot hold a
    request open)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _refuse(413, f"request body over {self.max_bytes} bytes", scope, receive, send)
            return
        body, deadline = b"", time.monotonic() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                await _refuse(408, f"request body not received within {self.timeout:g} s", scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await _refuse(413, f"request body over {self.max_bytes} bytes", scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()  # after the body: only a disconnect is left to hear
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _refuse(status: int, message: str, scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse({"detail": message}, status_code=status, headers={"connection": "close"})
    await response(scope, receive, send)


class Measure:
    """Count requests and their latency by endpoint (a fixed set of paths) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            path = scope["path"] if scope["path"] in PATHS else "other"
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
            self.metrics.requests.labels(path, str(status)).inc()
