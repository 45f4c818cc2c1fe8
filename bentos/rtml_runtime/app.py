"""The runtime's HTTP surface as a plain ASGI app.

Hand-routed rather than Starlette/FastAPI: every request passes through here, and a router,
request object and response object per call are most of a framework's cost on a path whose
model work is ~10 µs (benchmarks/RESULTS.md). The routes are few and fixed, so a dict lookup
is enough. BentoML mounts this app (service.py); `rtml serve` runs the same app.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from rtml_runtime import v2codec
from rtml_runtime.engine import Runtime
from rtml_runtime.errors import RequestError
from rtml_runtime.jsonbody import parse_json
from rtml_runtime.push import FeaturePusher, authorize_push

log = logging.getLogger("rtml.runtime.http")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
JSON = [(b"content-type", b"application/json")]
V2_HEADER_LENGTH = v2codec.HEADER_LENGTH.lower().encode()


class RuntimeApp:
    """ASGI application serving one Runtime."""

    def __init__(
        self,
        runtime: Runtime,
        on_startup: Callable[[], Awaitable[None]] | None = None,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.runtime = runtime
        self.on_startup = on_startup
        self.on_shutdown = on_shutdown
        self.max_body = runtime.config.settings.max_body_bytes
        self.pusher = FeaturePusher(runtime.config)
        name = runtime.config.name
        self.get_routes: dict[str, Callable[[], tuple[int, Any]]] = {
            "/v2/health/live": lambda: (200, {"live": True}),
            "/v2/health/ready": self._ready,
            f"/v2/models/{name}/ready": self._ready,
            f"/v2/models/{name}": lambda: (200, self.runtime.metadata_v2()),
            "/v2": lambda: (
                200,
                {"name": "rtml", "version": "0.1.0", "extensions": list(v2codec.EXTENSIONS)},
            ),
        }

    def _ready(self) -> tuple[int, Any]:
        if self.runtime.ready:
            return 200, {"ready": True}
        return 503, {"ready": False, "reason": self.runtime.not_ready_reason}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.on_startup is not None:
                    await self.on_startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.on_shutdown is not None:
                    await self.on_shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_body:
                await self._drain(receive, more, size)
                raise RequestError(
                    413,
                    "body_too_large",
                    f"the body is over the limit of {self.max_body} bytes",
                    None,
                )
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _drain(self, receive: Receive, more: bool, size: int) -> None:
        """Read and drop the rest of an oversized body (up to a bound) so the client, still
        sending, receives the 413 instead of a connection reset."""
        limit = 16 * self.max_body
        while more and size < limit:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)

    async def _infer_v2(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        """JSON or binary tensor data in and out: v2codec reads and writes both."""
        header_length = encoding = None
        for key, value in scope["headers"]:
            if key == V2_HEADER_LENGTH:
                header_length = value
            elif key == b"content-encoding":
                encoding = value
        request = v2codec.decode_request(
            await self._read_body(scope, receive), header_length, encoding
        )
        body, headers = v2codec.encode_response(await self.runtime.infer_v2(name, request), request)
        await _send(send, 200, body, headers)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            if method == "GET":
                if path == "/metrics":
                    body, ctype = self.runtime.metrics.exposition()
                    await _send(send, 200, body, [(b"content-type", ctype.encode())])
                    return
                route = self.get_routes.get(path)
                if route is None:
                    raise RequestError(404, "not_found", f"no route GET {path}", None)
                status, payload = route()
                await _send_json(send, status, payload)
                return
            if method != "POST":
                raise RequestError(405, "method_not_allowed", f"{method} is not allowed here", None)
            runtime = self.runtime
            if path == "/predict":
                result = await runtime.predict(parse_json(await self._read_body(scope, receive)))
            elif path == "/predict_batch":
                result = await runtime.predict_batch(
                    parse_json(await self._read_body(scope, receive))
                )
            elif path.startswith("/v2/models/") and path.endswith("/infer"):
                await self._infer_v2(
                    path[len("/v2/models/") : -len("/infer")], scope, receive, send
                )
                return
            elif path.startswith("/push/"):
                authorize_push(runtime.config.settings.push_token, _header(scope, b"authorization"))
                result = await self.pusher.push(
                    path[len("/push/") :], parse_json(await self._read_body(scope, receive))
                )
            else:
                raise RequestError(404, "not_found", f"no route POST {path}", None)
            await _send_json(send, 200, result)
        except RequestError as e:
            headers = list(e.headers)
            if e.retry_after_s is not None:
                headers.append((b"retry-after", str(max(1, round(e.retry_after_s))).encode()))
            await _send_json(send, e.status, e.body(), headers)
        except Exception:
            log.exception("unhandled error", extra={"path": path})
            await _send_json(
                send,
                500,
                {
                    "error": {
                        "code": "internal",
                        "field": None,
                        "message": "internal error; see the logs",
                    }
                },
            )


def _header(scope: Scope, name: bytes) -> bytes | None:
    """A request header's value (ASGI gives names in lower case)."""
    return next((v for k, v in scope["headers"] if k == name), None)


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    await _send(send, status, body, [*JSON, *(headers or [])])
