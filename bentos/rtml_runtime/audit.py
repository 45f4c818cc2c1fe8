"""spec.audit: one record per assessment appended to a Redis Stream, off the response path.

The request path only puts a tuple into a bounded queue (`put_nowait`: a full queue drops the
record and counts it, it never waits). One thread drains the queue in batches, building each
record and sending every batch as one pipelined `XADD ... MAXLEN ~ n` (and an XADD to the
alert stream for a decision at or above `alertAt`). A stalled Redis holds that thread, not a
request: its socket timeout ends the wait, the batch is counted `failed`, and new records are
dropped (counted) while the queue is full. docs/decisions.md, "Audit".

Raw inputs are not recorded unless spec.audit.includeInputs: a record carries the sha256 of
the canonical JSON of what the caller sent (entity id and request features).
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import redis
from prometheus_client import Counter, Gauge

from rtml.api.model import Audit
from rtml_runtime.decision import at_or_above

log = logging.getLogger("rtml.runtime")
BATCH = 256  # records per pipelined round trip
SOCKET_TIMEOUT_S = 1.0  # a stalled Redis holds the writer thread at most this long per batch
_STOP = object()


def inputs_digest(inputs: Mapping[str, Any]) -> str:
    """sha256 of the inputs' canonical JSON (sorted keys, no spaces): equal inputs, equal digest."""
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


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
        "score": json.dumps(answer["score"]),
        "degraded": json.dumps(answer["degraded"]),
        "reasons": json.dumps(answer["reasons"]),
        "modelScores": json.dumps(answer["modelScores"], sort_keys=True),
        "ruleHits": json.dumps(answer["ruleHits"]),
        "inputsSha256": inputs_digest(inputs),
    }
    if include_inputs:
        record["inputs"] = json.dumps(inputs, sort_keys=True)
    return record


class AuditWriter:
    """The queue and the thread that writes it to Redis."""

    def __init__(
        self,
        spec: Audit,
        redis_url: str,
        capacity: int,
        written: Counter,
        dropped: Counter,
        failed: Counter,
        depth: Gauge,
    ) -> None:
        self.spec = spec
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self.written, self.dropped, self.failed, self.depth = written, dropped, failed, depth
        self.client = redis.Redis.from_url(
            redis_url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S
        )
        self.thread = threading.Thread(target=self._run, name="rtml-audit", daemon=True)
        self.thread.start()

    def submit(self, answer: Mapping[str, Any], inputs: Mapping[str, Any], request_id: str) -> None:
        """Queue one record; never waits (a full queue drops it and counts the drop)."""
        try:
            self.queue.put_nowait((answer, inputs, request_id, time.time()))
        except queue.Full:
            self.dropped.inc()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is _STOP:
                return
            batch = [item]
            while len(batch) < BATCH:
                try:
                    more = self.queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    self._write(batch)
                    return
                batch.append(more)
            self._write(batch)
            self.depth.set(self.queue.qsize())

    def _write(self, batch: list[Any]) -> None:
        spec = self.spec
        try:
            pipe = self.client.pipeline(transaction=False)
            for answer, inputs, request_id, at in batch:
                record = audit_record(answer, inputs, request_id, at, spec.include_inputs)
                pipe.xadd(spec.stream, record, maxlen=spec.max_len, approximate=True)  # type: ignore[arg-type]
                if spec.alert_stream and at_or_above(record["decision"], spec.alert_at):
                    pipe.xadd(spec.alert_stream, record, maxlen=spec.max_len, approximate=True)  # type: ignore[arg-type]
            pipe.execute()
        except Exception as e:
            self.failed.inc(len(batch))
            log.warning(
                "audit records could not be written: %s",
                e or type(e).__name__,
                extra={"records": len(batch), "stream": spec.stream},
            )
            return
        self.written.inc(len(batch))

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (within `timeout_s`), then stop the thread."""
        try:
            self.queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            return
        self.thread.join(timeout_s)
        self.client.close()
