"""Where events come from and results go: a small interface, and Redis Streams behind it.

The consumer needs six things of a source: create its group, read new entries, re-read its own
unacknowledged ones (after a restart under the same name), claim others' that sat idle too long
(a consumer that crashed), acknowledge, and report lag; and one of a sink: publish a result.
A Kafka source would map them to a consumer group's poll, committed offsets (an offset commit is
the ack, and a rebalance is the reclaim) and the group's lag; no broker runs on this machine
(docs/streaming.md), so only Redis is implemented.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Entry = tuple[str, dict[bytes, bytes]]  # (entry id, fields)


@dataclass(frozen=True, slots=True)
class GroupState:
    lag: int | None  # entries not yet delivered to the group (None: the server cannot tell)
    pending: int  # delivered, not yet acknowledged


class EventSource(Protocol):
    async def ensure_group(self) -> None: ...
    async def read_new(self, count: int, block_ms: int) -> list[Entry]: ...
    async def read_own_pending(self, count: int, after: str) -> tuple[list[Entry], str | None]:
        """(entries, the id to read on after; None when none are left)."""
        ...

    async def claim_idle(self, min_idle_ms: int, count: int) -> list[Entry]: ...
    async def ack(self, entry_ids: list[str]) -> None: ...
    async def state(self) -> GroupState: ...


class ResultSink(Protocol):
    async def publish(self, results: Sequence[Mapping[str, str]]) -> None: ...


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(raw: Any) -> list[Entry]:
    """XREADGROUP's or XAUTOCLAIM's entries; an entry deleted from the stream while pending
    comes back without fields and is skipped (XAUTOCLAIM drops it from the pending list)."""
    return [(_text(i), dict(f)) for i, f in raw or () if f is not None]


class RedisStreamSource:
    """A Redis Stream read through a consumer group (XREADGROUP, XAUTOCLAIM, XACK)."""

    def __init__(self, redis: Any, stream: str, group: str, consumer: str) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._claim_cursor = "0-0"

    async def ensure_group(self) -> None:
        """The group, reading from the stream's start, created with the stream if need be."""
        from redis.exceptions import ResponseError

        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def read_new(self, count: int, block_ms: int) -> list[Entry]:
        reply = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        return _entries(reply[0][1]) if reply else []

    async def read_own_pending(self, count: int, after: str) -> tuple[list[Entry], str | None]:
        """This consumer's delivered-but-unacknowledged entries after `after` (a restart under
        the same name picks up where the crashed process stopped, without waiting for idle)."""
        reply = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: after}, count=count
        )
        raw = reply[0][1] if reply else []
        # An entry trimmed from the stream while pending comes back without fields: there is
        # nothing to answer, and left unacknowledged it would stay pending for ever.
        gone = [_text(i) for i, f in raw if f is None]
        await self.ack(gone)
        return _entries(raw), _text(raw[-1][0]) if raw else None

    async def claim_idle(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Entries pending for any consumer longer than `min_idle_ms`, now this one's; one
        XAUTOCLAIM step, resumed from where the last one stopped."""
        reply = await self.redis.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=min_idle_ms,
            start_id=self._claim_cursor,
            count=count,
        )
        self._claim_cursor = _text(reply[0])
        return _entries(reply[1])

    async def ack(self, entry_ids: list[str]) -> None:
        if entry_ids:
            await self.redis.xack(self.stream, self.group, *entry_ids)

    async def state(self) -> GroupState:
        for group in await self.redis.xinfo_groups(self.stream):
            if _text(group["name"]) == self.group:
                lag = group.get("lag")
                return GroupState(
                    lag=None if lag is None else int(lag), pending=int(group["pending"])
                )
        return GroupState(lag=None, pending=0)


class RedisStreamSink:
    """Results appended to a Redis Stream, trimmed to about `max_length` entries."""

    def __init__(self, redis: Any, stream: str, max_length: int) -> None:
        self.redis = redis
        self.stream = stream
        self.max_length = max_length

    async def publish(self, results: Sequence[Mapping[str, str]]) -> None:
        """All of them in one pipelined round trip (not a transaction: a result published
        twice is allowed, one lost is not, and the entries are acknowledged only after)."""
        if not results:
            return
        pipe = self.redis.pipeline(transaction=False)
        trim = {"maxlen": self.max_length, "approximate": True} if self.max_length > 0 else {}
        for fields in results:
            pipe.xadd(self.stream, dict(fields), **trim)
        await pipe.execute()
