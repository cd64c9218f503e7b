"""Plain ASGI middleware (no buffering of responses, so event streams and files flow):

- `RequestLog`: one log line and the HTTP metrics per request. Paths are logged, headers never
  (that is where API keys travel).
- `BodyLimit`: bodies over `MUSICGEN_MAX_BODY_BYTES` are refused with 413 before any parsing,
  whether or not they declare their length. A JSON body sent without a JSON content type (what
  `curl -d` does) is taken as JSON, so the seed's clients keep working.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("musicgen_server.api.requests")

_BODY_METHODS = {"POST", "PUT", "PATCH"}
_LENIENT_TYPES = {"", "application/x-www-form-urlencoded", "text/plain"}


class RequestLog:
    def __init__(self, app: ASGIApp, metrics: Callable[[], Any]):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            method, path = scope["method"], scope["path"]
            route = getattr(scope.get("route"), "path", None) or ("unmatched" if status == 404 else path)
            client = (scope.get("client") or ("-", 0))[0]
            log.info(
                "%s %s %d %.1fms",
                method,
                path,
                status,
                elapsed * 1000,
                extra={
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "client": client,
                },
            )
            metrics = self.metrics()
            if metrics is not None:
                metrics.requests.labels(method, route, str(status)).inc()
                metrics.latency.labels(method, route).observe(elapsed)


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send, int(declared))
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send, None)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().decode("latin-1").lower()
        if content_type in _LENIENT_TYPES and body.lstrip()[:1] in (b"{", b"["):
            replaced = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = dict(scope, headers=[*replaced, (b"content-type", b"application/json")])
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send, declared: int | None) -> None:
        size = f"{declared} bytes" if declared is not None else "larger than that"
        detail = (
            f"the request body is {size}; the limit is {self.max_bytes} bytes (MUSICGEN_MAX_BODY_BYTES): "
            "send a smaller request"
        )
        payload = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
