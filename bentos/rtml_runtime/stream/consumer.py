"""The stream loop: read -> windows -> predict -> publish -> acknowledge, at least once.

- An entry is acknowledged only after its result is on the output stream; if the process dies
  in between, the entry stays pending and is handled again (so the output may hold a result
  twice; consumers de-duplicate by `event_id`).
- On start the consumer first re-reads its own pending entries (a restart under the same name),
  then every `claim_every_s` takes over entries idle for `claim_min_idle_ms` from any consumer
  (XAUTOCLAIM: a consumer that crashed and did not come back).
- Backpressure: at most `max_in_flight` events are between read and acknowledgement; no new
  read while that many are, so a slow output stream or model slows the reads, never grows a
  queue in memory.
- Windows (windowstore.py) are updated atomically with the event's "seen" marker, so the
  second handling of an event scores it again but does not count it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rtml_runtime.engine import Runtime
from rtml_runtime.errors import RequestError
from rtml_runtime.stream.events import (
    EventError,
    EventFields,
    StreamEvent,
    decode_fields,
    error_fields,
    parse_event,
    predict_payload,
    result_fields,
)
from rtml_runtime.stream.metrics import EVENT_OUTCOMES, StreamMetrics
from rtml_runtime.stream.source import Entry, EventSource, ResultSink
from rtml_runtime.stream.windowstore import Status, WindowStore

log = logging.getLogger("rtml.stream")
RETRY_S = 1.0  # after a failed read, before the next


@dataclass(frozen=True)
class ConsumerOptions:
    fields: EventFields = field(default_factory=EventFields)
    batch_size: int = 32
    block_ms: int = 1000
    max_in_flight: int = 64
    claim_min_idle_ms: int = 30_000
    claim_every_s: float = 5.0
    # Predictions awaiting their feature read at once. A few hide the read's round trip; many
    # only queue on the one event loop, inside the feature budget (measured: 256 at once put
    # reads past featureBudgetMs 5 ms and opened the feature breaker).
    predict_concurrency: int = 4
    stats_every_s: float = 1.0
    progress_every_s: float = 5.0


class StreamConsumer:
    def __init__(
        self,
        runtime: Runtime,
        source: EventSource,
        sink: ResultSink,
        windows: WindowStore | None,
        metrics: StreamMetrics,
        options: ConsumerOptions,
    ) -> None:
        self.runtime = runtime
        self.source = source
        self.sink = sink
        self.windows = windows
        self.metrics = metrics
        self.options = options
        self.entity_key = runtime.entity_field if runtime.view is not None else None
        self.request_features: Sequence[str] = runtime.request_features
        self.tasks: set[asyncio.Task[None]] = set()
        self.inflight: set[str] = set()  # entry ids, so a claim never starts one twice
        self.handled = 0
        self.counts = dict.fromkeys(EVENT_OUTCOMES, 0)
        # Shared by every read's task: the bound is on the process, not on one batch.
        self.predicting = asyncio.Semaphore(options.predict_concurrency)

    # -- the loop ------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        await self.source.ensure_group()
        watcher = asyncio.create_task(self._watch(stop))
        try:
            await self._recover_own(stop)
            next_claim = 0.0
            while not stop.is_set():
                room = self.room
                if room <= 0:  # backpressure: wait for a result to be out before reading more
                    await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
                    continue
                count = min(room, self.options.batch_size)
                try:
                    if time.monotonic() >= next_claim:
                        next_claim = time.monotonic() + self.options.claim_every_s
                        claimed = await self.source.claim_idle(
                            self.options.claim_min_idle_ms, count
                        )
                        self._start(claimed, reclaimed=True)
                        if claimed:  # more may be waiting: claim on at once, not in claim_every_s
                            next_claim = 0.0
                            continue
                    self._start(await self.source.read_new(count, self.options.block_ms))
                except Exception as e:  # the stream's Redis: retry, the group keeps our place
                    log.warning("reading the stream failed: %s", e, extra={"error": repr(e)})
                    await asyncio.sleep(RETRY_S)
        finally:
            if self.tasks:
                await asyncio.wait(self.tasks)
            watcher.cancel()
            log.info("stopped", extra={"handled": self.handled})

    async def _recover_own(self, stop: asyncio.Event) -> None:
        """Entries this consumer (this name) read and never acknowledged: a restart after a
        crash handles them first, without waiting for them to be idle long enough to claim."""
        after = "0"
        while not stop.is_set():
            room = self.room
            if room <= 0:
                await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            count = min(room, self.options.batch_size)
            entries, last = await self.source.read_own_pending(count, after)
            if last is None:
                return
            after = last
            self._start(entries, reclaimed=True)

    def _start(self, entries: list[Entry], reclaimed: bool = False) -> None:
        """One task for the entries of one read: its window updates go in one pipeline, its
        results in another, its acknowledgements in one XACK (one round trip each, not one per
        event: redis-py's per-command cost was most of an event's CPU)."""
        fresh = [e for e in entries if e[0] not in self.inflight]
        if not fresh:
            return
        if reclaimed:
            self.metrics.claimed.inc(len(fresh))
        self.inflight.update(e[0] for e in fresh)
        self.metrics.inflight.set(len(self.inflight))
        task = asyncio.create_task(self._handle(fresh))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @property
    def room(self) -> int:
        return self.options.max_in_flight - len(self.inflight)

    # -- one read's events ---------------------------------------------------------------
    async def _handle(self, entries: list[Entry]) -> None:
        start = time.perf_counter()
        ids = [e[0] for e in entries]
        try:
            answered = await self._answer(entries)
            await self.sink.publish([result for result, _ in answered])
            await self.source.ack(ids)  # only now: the results are out
        except Exception as e:
            self.metrics.failed.inc(len(ids))
            log.warning(
                "events were left pending after a failure; they will be redelivered: %s",
                e,
                extra={"entries": len(ids), "first": ids[0], "error": repr(e)},
            )
            return
        finally:
            self.inflight.difference_update(ids)
            self.metrics.inflight.set(len(self.inflight))
        elapsed = time.perf_counter() - start
        self.handled += len(answered)
        for _, outcome in answered:
            self.counts[outcome] += 1
            self.metrics.events[outcome].inc()
            self.metrics.duration.observe(elapsed)

    async def _answer(self, entries: list[Entry]) -> list[tuple[dict[str, str], str]]:
        """(the result to publish, the outcome) for each entry, in order. A bad event or a
        refused prediction is an error result: handling it again would answer the same."""
        names = self.options.fields
        parsed: list[StreamEvent | dict[str, str]] = []
        for entry_id, raw in entries:
            try:
                parsed.append(parse_event(entry_id, raw, names))
            except EventError as e:
                event_id = decode_fields(raw).get(names.event_id)
                parsed.append(error_fields(entry_id, event_id, "invalid_event", e.message, e.field))
        events = [p for p in parsed if isinstance(p, StreamEvent)]
        statuses: dict[str, Status | EventError] = {}
        if self.windows is not None and events:
            for event, status in zip(events, await self.windows.apply_all(events), strict=True):
                statuses[event.entry_id] = status

        async def answer(item: StreamEvent | dict[str, str]) -> tuple[dict[str, str], str]:
            if not isinstance(item, StreamEvent):
                return item, "error"
            status = statuses.get(item.entry_id, "ok")
            if isinstance(status, EventError):
                fields = error_fields(
                    item.entry_id, item.event_id, "invalid_event", status.message, status.field
                )
                return fields, "error"
            payload = predict_payload(item, self.entity_key, self.request_features)
            try:
                async with self.predicting:
                    reply = await self.runtime.predict(payload)
            except RequestError as e:
                return error_fields(
                    item.entry_id, item.event_id, e.code, e.message, e.field
                ), "error"
            return result_fields(item, reply), status

        return list(await asyncio.gather(*(answer(p) for p in parsed)))

    # -- lag, pending, progress ----------------------------------------------------------
    async def _watch(self, stop: asyncio.Event) -> None:
        last_log = time.monotonic()
        last_handled = 0
        while not stop.is_set():
            try:
                state = await self.source.state()
            except Exception as e:
                log.warning("reading the group's state failed: %s", e)
            else:
                self.metrics.lag.set(-1 if state.lag is None else state.lag)
                self.metrics.pending.set(state.pending)
                now = time.monotonic()
                if now - last_log >= self.options.progress_every_s:
                    rate = (self.handled - last_handled) / (now - last_log)
                    last_log, last_handled = now, self.handled
                    log.info("progress", extra=self._progress(state.lag, state.pending, rate))
            await asyncio.sleep(self.options.stats_every_s)

    def _progress(self, lag: int | None, pending: int, rate: float) -> dict[str, Any]:
        return {
            "handled": self.handled,
            "events_per_s": round(rate, 1),
            "lag": lag,
            "pending": pending,
            "inflight": len(self.inflight),
            **self.counts,
        }
