"""One pipelined Redis connection for the feature read's hot path.

Why not `redis.asyncio`: one HMGET of a Feast row (27 fields) costs 207 µs of CPU through
redis-py's async client and 86 µs through this module, measured side by side on this machine
(redis-py 7.4 with hiredis; docs/runtime.md has the script). redis-py's cost is its per-call
machinery: the pool checkout and release, a lock per connection, the command's argument
encoding and response callbacks. At saturation that difference is a quarter of rtml's whole
per-request CPU with a Redis read.

What is hand-written here is only the transport: an asyncio Protocol that writes RESP commands
and hands each reply to the oldest waiting call (Redis answers one connection's commands in
order, so concurrent calls pipeline on one socket). Parsing replies is hiredis, the Redis
project's own C parser, which redis-py uses too. The handshake covers the URL's password,
username and database; `rediss://` uses TLS with the system's default verification.

A call cancelled by its caller (the feature budget) leaves its slot in the queue, and its reply
is dropped when it arrives. A server that stops answering without closing the socket (SIGSTOP,
a dead host behind a half-open TCP connection) is noticed when the oldest call has waited
`stale_after_s`: the connection is dropped and the next call dials afresh.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.parse
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis


class RedisError(Exception):
    """Redis answered with an error reply, or could not be reached."""


class RedisConnectionError(RedisError, ConnectionError):
    """The connection could not be made, or was lost with calls waiting on it."""


def encode(*args: bytes) -> bytes:
    """A command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class _Replies:
    """A pipeline's replies gathered into one future: the batch's caller wakes once, not once
    per command (a future per command and `asyncio.gather` over them cost ~1.5 µs a command on
    the event loop, which the audit writer pays for every record). Quacks like the future of a
    single command where _Protocol uses one; the first error reply or a lost connection fails
    the whole batch at once, as gather did."""

    __slots__ = ("future", "left", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int) -> None:
        self.future = future
        self.left = count
        self.replies: list[Any] = []

    def done(self) -> bool:
        return self.future.done()

    def set_result(self, reply: Any) -> None:
        self.replies.append(reply)
        self.left -= 1
        if self.left == 0:
            self.future.set_result(self.replies)

    def set_exception(self, error: BaseException) -> None:
        self.future.set_exception(error)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = hiredis.Reader()
        self.waiting: deque[tuple[asyncio.Future[Any] | _Replies, float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed(data)
            while (reply := self.parser.gets()) is not False:
                if not self.waiting:
                    raise RedisError("Redis sent a reply nobody asked for")
                future, _ = self.waiting.popleft()
                if future.done():  # its caller gave up (budget or deadline)
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(RedisError(f"Redis refused the command: {reply}"))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, RedisError) as e:
            self.abort(RedisConnectionError(f"Redis sent something that is not RESP: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(RedisConnectionError(f"the connection to Redis was lost: {exc or 'closed'}"))

    def abort(self, error: Exception) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self._fail(error)

    def _fail(self, error: Exception) -> None:
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)


class RespClient:
    """`await client.call(b"HMGET", key, *fields)`, pipelined on one lazily dialled socket."""

    def __init__(
        self, url: str, connect_timeout_s: float = 1.0, stale_after_s: float = 5.0
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"{url!r} is not a Redis URL such as redis://127.0.0.1:6379/0")
        self.host = parts.hostname
        self.port = parts.port or 6379
        self.tls = parts.scheme == "rediss"
        db = parts.path.lstrip("/") or "0"
        if not db.isdigit():
            raise ValueError(f"the Redis URL names database {db!r}, not a number")
        self.handshake: list[bytes] = []
        if parts.password is not None:
            password = urllib.parse.unquote(parts.password).encode()
            user = [urllib.parse.unquote(parts.username).encode()] if parts.username else []
            self.handshake.append(encode(b"AUTH", *user, password))
        if db != "0":
            self.handshake.append(encode(b"SELECT", db.encode()))
        self.connect_timeout_s = connect_timeout_s
        self.stale_after_s = stale_after_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def call(self, *args: bytes) -> Any:
        return await self.send(encode(*args))

    async def send(self, command: bytes) -> Any:
        """Send one RESP-encoded command (callers on a hot path pre-encode what they can)."""
        protocol, now = await self._live()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        protocol.waiting.append((future, now))
        assert protocol.transport is not None
        protocol.transport.write(command)
        return await future

    async def pipeline(self, commands: Sequence[bytes]) -> list[Any]:
        """Send RESP-encoded commands in one write; their replies, in order. An error reply
        raises (Redis ran the commands after it all the same), as does a lost connection."""
        if not commands:
            return []
        protocol, now = await self._live()
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        replies = _Replies(future, len(commands))
        protocol.waiting.extend([(replies, now)] * len(commands))
        assert protocol.transport is not None
        protocol.transport.write(b"".join(commands))
        return await future

    async def _live(self) -> tuple[_Protocol, float]:
        """The connection to write on (dialled afresh when closed or stale), and now."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        now = time.monotonic()
        if protocol.waiting and now - protocol.waiting[0][1] > self.stale_after_s:
            protocol.abort(RedisConnectionError("Redis has not answered for too long"))
            protocol = await self._connect()
        return protocol, now

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            current = self._protocol
            if current is not None and not current.closed:
                return current  # another call dialled while this one waited
            loop = asyncio.get_running_loop()
            context = ssl.create_default_context() if self.tls else None
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(_Protocol, self.host, self.port, ssl=context),
                    self.connect_timeout_s,
                )
            except (OSError, TimeoutError) as e:
                raise RedisConnectionError(
                    f"cannot connect to Redis at {self.host}:{self.port}: {e or 'timed out'}"
                ) from e
            for command in self.handshake:
                future: asyncio.Future[Any] = loop.create_future()
                protocol.waiting.append((future, time.monotonic()))
                assert protocol.transport is not None
                protocol.transport.write(command)
                try:
                    await asyncio.wait_for(future, self.connect_timeout_s)
                except BaseException:
                    protocol.abort(RedisConnectionError("the Redis handshake failed"))
                    raise
            self._protocol = protocol
            return protocol

    async def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
