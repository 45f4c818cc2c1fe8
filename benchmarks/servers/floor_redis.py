"""The floor with a Redis read: raw ASGI under uvicorn, one pipelined HMGET of the entity's
Feast row (hiredis parses the reply), ONNX Runtime on the 30 inputs. The least any server can
do for a request that reads its features from Feast's Redis online store.

    BENCH_MODEL=model.onnx BENCH_REDIS_URL=redis://127.0.0.1:6379/0 BENCH_FEAST_VIEW=card_features \
    BENCH_FEAST_FEATURES=a,b,... BENCH_JOIN_KEY=card_id \
    uvicorn floor_redis:app --app-dir benchmarks/servers --lifespan off --no-access-log

What it borrows from rtml: only Feast's encoding, from `rtml_runtime.feast_codec` — the entity
key is serialised per request with Feast's own `serialize_entity_key` (as any server must: the
id arrives in the request), the hash fields (murmur3 of "view:feature") are computed once at
start, and values are decoded with the codec's `parse_value`. Not borrowed: rtml's Redis client
(resp.py). The transport is the ~20 lines below: one asyncio connection, dialled on the first
request, whose replies resolve the oldest waiting future (Redis answers in order, so concurrent
requests pipeline on the socket). No reconnect, no timeouts, no breaker, no TTL check (the
`_ts` field is read, as rtml reads it, only to tell a missing row: 404), no validation beyond
what a KeyError gives, no metrics: what rtml does on top of this is what the ratio measures.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis
from fraud_model import Scorer

from rtml.contract import FEAST_ENTITY_KEY_VERSION, FEAST_PROJECT
from rtml_runtime.feast_codec import codec, field_name

SCORER = Scorer()
CODEC = codec()
VIEW = os.environ["BENCH_FEAST_VIEW"]
NAMES = os.environ["BENCH_FEAST_FEATURES"].split(",")
JOIN_KEY = os.environ["BENCH_JOIN_KEY"]
FIELDS = [field_name(VIEW, n) for n in NAMES] + [f"_ts:{VIEW}".encode()]
# HMGET <key> <fields...>: all but the key is the same on every request.
HEAD = b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(FIELDS))
TAIL = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in FIELDS)


class Pipe(asyncio.Protocol):
    """Writes commands; each parsed reply resolves the oldest waiting future."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.waiting.popleft().set_result(reply)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(command)
        return future


_pipe: asyncio.Task[Pipe] | None = None


async def _dial() -> Pipe:
    url = urllib.parse.urlsplit(os.environ["BENCH_REDIS_URL"])
    loop = asyncio.get_running_loop()
    _, pipe = await loop.create_connection(Pipe, url.hostname, url.port or 6379)
    return pipe


async def hmget(key: bytes) -> list[bytes | None]:
    global _pipe  # noqa: PLW0603 - one connection per process, dialled by the first request
    if _pipe is None:
        _pipe = asyncio.ensure_future(_dial())
    pipe = await _pipe
    reply: list[bytes | None] = await pipe.send(b"%s$%d\r\n%s\r\n%s" % (HEAD, len(key), key, TAIL))
    return reply


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    request = json.loads(body)
    key = CODEC.redis_key(
        FEAST_PROJECT, JOIN_KEY, str(request["entity_id"]), FEAST_ENTITY_KEY_VERSION
    )
    *blobs, ts = await hmget(key)
    if ts is None:
        status, out = 404, b'{"error":"unknown entity"}'
    else:
        parse = CODEC.parse_value
        values = {n: parse(b) for n, b in zip(NAMES, blobs, strict=True) if b is not None}
        status = 200
        out = json.dumps({"score": SCORER.score({**values, **request["features"]})}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(out))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": out})
