"""spec.audit: one record per assessment appended to a Redis Stream, off the response path.

The request path only appends a tuple to a bounded deque (a full one drops the record and
counts it; nothing waits). One asyncio task on the serving event loop drains it: after a
short linger (`LINGER_S`, so that records coalesce), it builds the batch's records, encodes
them as raw RESP `XADD ... MAXLEN ~ n` (and an XADD to the alert stream for a decision at or
above `alertAt`) and sends the whole batch in one write on the runtime's hiredis client
(resp.py). A stalled Redis holds that task's await, not the loop: `TIMEOUT_S` ends the wait,
the batch is counted `failed`, the next batch dials afresh, and new records are dropped
(counted) while the deque is full. docs/decisions.md, "Audit", has the measurements against
the earlier writer (a thread with redis-py's pipeline, ~0.5 ms of c=1 p50).

Raw inputs are not recorded unless spec.audit.includeInputs: a record carries the sha256 of
the canonical JSON of what the caller sent (entity id and request features).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge

from rtml.api.model import Audit
from rtml_runtime.decision import at_or_above
from rtml_runtime.resp import RespClient

log = logging.getLogger("rtml.runtime")
BATCH = 256  # records per pipelined write
LINGER_S = 0.005  # records that arrive within this share one write (docs/decisions.md, "Audit")
TIMEOUT_S = 1.0  # a stalled Redis holds a batch at most this long, then it counts as failed
# Encoders built once: json.dumps builds a new encoder on every call with sort_keys.
_dumps = json.JSONEncoder().encode
_dumps_sorted = json.JSONEncoder(sort_keys=True).encode
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def inputs_digest(inputs: Mapping[str, Any]) -> str:
    """sha256 of the inputs' canonical JSON (sorted keys, no spaces): equal inputs, equal digest."""
    return hashlib.sha256(_canonical(inputs).encode()).hexdigest()


def audit_record(
    answer: Mapping[str, Any],
    inputs: Mapping[str, Any],
    request_id: str,
    at: float,
    include_inputs: bool,
) -> dict[str, str]:
    """The stream entry for one assessment: flat string fields, JSON for the lists and maps."""
    record = {
        "requestId": request_id,
        "time": datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds"),
        "model": str(answer["model"]),
        "version": str(answer["version"]),
        "variant": str(answer["variant"]),
        "decision": str(answer["decision"]),
        "riskLevel": str(answer["riskLevel"]),
        "score": _dumps(answer["score"]),
        "degraded": _dumps(answer["degraded"]),
        "reasons": _dumps(answer["reasons"]),
        "modelScores": _dumps_sorted(answer["modelScores"]),
        "ruleHits": _dumps(answer["ruleHits"]),
        "inputsSha256": inputs_digest(inputs),
    }
    if include_inputs:
        record["inputs"] = _dumps_sorted(inputs)
    return record


def xadd_prefix(stream: str, max_len: int) -> bytes:
    """`XADD stream MAXLEN ~ max_len *` in RESP, without the array header (its count depends
    on the record's fields)."""
    args = [b"XADD", stream.encode(), b"MAXLEN", b"~", str(max_len).encode(), b"*"]
    return b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def encode_fields(record: Mapping[str, str]) -> bytes:
    """The record's fields and values as RESP bulk strings."""
    parts = []
    for key, value in record.items():
        k, v = key.encode(), value.encode()
        parts.append(b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v))
    return b"".join(parts)


FIELDS = (
    "requestId",
    "time",
    "model",
    "version",
    "variant",
    "decision",
    "riskLevel",
    "score",
    "degraded",
    "reasons",
    "modelScores",
    "ruleHits",
    "inputsSha256",
)
MEMO_MAX = 4096  # distinct reason lists and model names kept encoded (a handful in practice)


class RecordEncoder:
    """`encode_fields(audit_record(...))`, the same bytes, at about a third of the CPU.

    The writer builds every record on the serving event loop, so its cost is taken from the
    requests: `json` calls were most of it (an encoder call costs ~1 µs even for `false` or
    `[]`, ~3 µs for a float) and the timestamp's `isoformat` another ~2 µs. Here numbers are
    their `repr` (what `json` writes for a finite float), the reasons and rule hits (a few
    distinct lists) and model names are encoded once and remembered, and the time's date and
    second once a second. Anything else (a non-finite score, a non-ASCII name) takes the
    `json` path. tests/unit/runtime/test_decisions.py checks both give the same bytes.
    """

    def __init__(self, include_inputs: bool) -> None:
        self.include_inputs = include_inputs
        keys = (*FIELDS, "inputs") if include_inputs else FIELDS
        self.count = len(keys)
        self._keys = [f"${len(k)}\r\n{k}\r\n" for k in keys]
        self._lists: dict[tuple[str, ...], str] = {}
        self._names: dict[str, str] = {}
        self._second = -1
        self._second_text = ""

    def fields(
        self,
        answer: Mapping[str, Any],
        inputs: Mapping[str, Any],
        request_id: str,
        at: float,
    ) -> bytes:
        values = [
            request_id,
            self._time(at),
            str(answer["model"]),
            str(answer["version"]),
            str(answer["variant"]),
            str(answer["decision"]),
            str(answer["riskLevel"]),
            _number(answer["score"]),
            _flag(answer["degraded"]),
            self._list(answer["reasons"]),
            self._scores(answer["modelScores"]),
            self._list(answer["ruleHits"]),
            inputs_digest(inputs),
        ]
        if self.include_inputs:
            values.append(_dumps_sorted(inputs))
        text = "".join(
            [f"{k}${len(v)}\r\n{v}\r\n" for k, v in zip(self._keys, values, strict=True)]
        )
        if text.isascii():  # then each length in characters is its length in bytes
            return text.encode()
        return encode_fields(dict(zip((*FIELDS, "inputs"), values, strict=False)))

    def _time(self, at: float) -> str:
        """datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds"), rounded as it
        rounds (to the microsecond, half to even, then truncated to the millisecond)."""
        fraction, whole = math.modf(at)
        micros = round(fraction * 1e6)
        if at < 0 or micros >= 1_000_000:  # before 1970, or a carry into the next second
            return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
        second = int(whole)
        if second != self._second:
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{micros // 1000:03d}+00:00"

    def _list(self, values: Any) -> str:
        if not values:
            return _dumps(values) if values is None else "[]"
        key = tuple(values)
        text = self._lists.get(key)
        if text is None:
            text = _dumps(values)
            if len(self._lists) < MEMO_MAX:
                self._lists[key] = text
        return text

    def _scores(self, scores: Mapping[str, Any]) -> str:
        if not scores:
            return "{}"
        names = self._names
        parts = []
        for name in sorted(scores):
            key = names.get(name)
            if key is None:
                key = _dumps(name) + ": "
                if len(names) < MEMO_MAX:
                    names[name] = key
            parts.append(key + _number(scores[name]))
        return "{" + ", ".join(parts) + "}"


def _flag(value: Any) -> str:
    return "true" if value is True else "false" if value is False else _dumps(value)


def _number(value: Any) -> str:
    """What `json` writes for a score: float.__repr__ when finite, null for None."""
    if value is None:
        return "null"
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    return _dumps(value)


Item = tuple[Mapping[str, Any], Mapping[str, Any], str, float]  # answer, inputs, id, time


class AuditWriter:
    """The bounded deque and the event-loop task that writes it to Redis."""

    def __init__(
        self,
        spec: Audit,
        redis_url: str,
        capacity: int,
        written: Counter,
        dropped: Counter,
        failed: Counter,
        depth: Gauge,
        linger_s: float = LINGER_S,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.spec = spec
        self.capacity = capacity
        self.linger_below = min(BATCH, max(1, capacity // 2))
        self.pending: deque[Item] = deque()
        self.written, self.dropped, self.failed, self.depth = written, dropped, failed, depth
        self.linger_s, self.timeout_s = linger_s, timeout_s
        # A batch that timed out leaves its calls waiting: the next batch then dials afresh.
        self.client = RespClient(
            redis_url, connect_timeout_s=timeout_s, stale_after_s=timeout_s / 2
        )
        self.encoder = RecordEncoder(spec.include_inputs)
        self.stream = xadd_prefix(spec.stream, spec.max_len)
        self.alerts = xadd_prefix(spec.alert_stream, spec.max_len) if spec.alert_stream else b""
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def submit(self, answer: Mapping[str, Any], inputs: Mapping[str, Any], request_id: str) -> None:
        """Queue one record (called on the event loop); never waits: a full deque drops it and
        counts the drop. The answer is read when the record is built: it must not change."""
        if len(self.pending) >= self.capacity or self._closing:
            self.dropped.inc()
            return
        self.pending.append((answer, inputs, request_id, time.time()))
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="rtml-audit")
        assert self._wake is not None
        if not self._wake.is_set():
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            if self.linger_s and not self._closing and len(self.pending) < self.linger_below:
                await asyncio.sleep(self.linger_s)
            self._wake.clear()
            while self.pending:
                n = min(BATCH, len(self.pending))
                batch = [self.pending.popleft() for _ in range(n)]
                await self._write(batch)
                self.depth.set(len(self.pending))
                if len(self.pending) < self.linger_below and not self._closing:
                    # What came in during the write lingers too (it set _wake): written at
                    # once, it went out a record or two a write, each write a system call
                    # and a wake-up of this task (~6 writes per 10 records at c=1). A queue
                    # half full or more is written at once: lingering would drop records.
                    break
            if self._closing and not self.pending:
                return

    def _commands(self, batch: list[Item]) -> list[bytes]:
        """The batch's XADDs: each record to the stream, and to the alert stream at or above
        alertAt. Built here, off the request path, from the answers the requests returned."""
        spec, fields = self.spec, self.encoder.fields
        header = b"*%d\r\n" % (6 + 2 * self.encoder.count)
        stream, alerts = header + self.stream, header + self.alerts
        commands = []
        for answer, inputs, request_id, at in batch:
            record = fields(answer, inputs, request_id, at)
            commands.append(stream + record)
            if self.alerts and at_or_above(answer["decision"], spec.alert_at):
                commands.append(alerts + record)
        return commands

    async def _write(self, batch: list[Item]) -> None:
        try:
            await asyncio.wait_for(self.client.pipeline(self._commands(batch)), self.timeout_s)
        except Exception as e:
            self.failed.inc(len(batch))
            log.warning(
                "audit records could not be written: %s",
                str(e) or type(e).__name__,  # a timeout's message is empty
                extra={"records": len(batch), "stream": self.spec.stream},
            )
            return
        self.written.inc(len(batch))

    async def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (within `timeout_s`), then stop the task."""
        self._closing = True
        task = self._task
        if task is not None:
            assert self._wake is not None
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except TimeoutError:
                task.cancel()
        await self.client.close()
