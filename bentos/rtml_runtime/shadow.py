"""Shadow scoring: the candidate scores a sampled share of requests after the champion answered.

A bounded `queue.Queue` (RTML_SHADOW_QUEUE, default 1,000) drained by one worker thread. The
response never waits: `submit` is a non-blocking put, and a full queue drops the item and
counts it (`rtml_shadow_dropped_total`), so a candidate slower than the traffic costs samples,
never latency or memory. One thread because ONNX Runtime releases the GIL while it runs, the
sessions use one intra-op thread, and the pod has a CPU budget sized for the champion: more
threads would only take more of it. Rejected: an asyncio task per item (its scoring would run
on the event loop, in the response path's time) and an unbounded queue (memory grows with a
slow candidate).

The worker scores in micro-batches: it waits for one item, sleeps `linger_s` (2 ms) when fewer
than a batch are queued, takes whatever is queued (up to `max_batch`, 64) and scores each
variant's rows with one ONNX Runtime call (`OnnxModel.predict_rows`). The per-wake-up and
per-call cost (the thread's wake-up, the Python around the call, which holds the GIL, on the
core the event loop needs) is then paid once per batch: measured in docs/traffic-split.md. Each
row is still recorded on its own: an outcome, a score and a duration, which is the batch's time
divided by its rows (what a row cost, not the latency of a one-row call; a batch of one is
exactly that). A failing batch is scored again row by row, so a row the model refuses is the
only error of its batch and a model that fails every call counts an error for each row; the
worker carries on.

The shadow variant's breaker is used by this thread only (breakers are single-threaded); it is
asked once per row and told each row's (per-row) duration and outcome.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from rtml_runtime.variants import Variant, feature_row

log = logging.getLogger("rtml.runtime.shadow")
_STOP = None
MAX_BATCH = 64
LINGER_S = 0.002
Item = tuple[Variant, Mapping[str, Any]]


def lowest_priority() -> None:
    """Run this thread at nice 19: on a shared core the kernel then hands the CPU to the
    request path as soon as it needs it, and shadow work fills only what is left. Linux
    schedules threads separately, so only this thread is lowered; raising one's own nice value
    needs no privilege. Elsewhere (no per-thread priority) it is a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class ShadowScorer:
    def __init__(self, size: int, max_batch: int = MAX_BATCH, linger_s: float = LINGER_S) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self._queue: queue.Queue[Item | None] = queue.Queue(size)
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        """Start the worker (idempotent; the first shadow plan starts it)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rtml-shadow", daemon=True)
            self._thread.start()

    def submit(self, variant: Variant, features: Mapping[str, Any]) -> bool:
        """Queue one scoring of `features` by `variant`; False (counted) when the queue is full."""
        try:
            self._queue.put_nowait((variant, features))
        except queue.Full:
            if variant.dropped is not None:
                variant.dropped.inc()
            return False
        return True

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        lowest_priority()
        q = self._queue
        while not self._stopping.is_set():
            item = q.get()
            if item is _STOP:
                return
            batch = [item]
            # A sleep, not a timed get: a get would wake this thread (and take the GIL from
            # the event loop) at every put; the sleep wakes it once.
            if self._linger_s > 0 and q.qsize() < self._max_batch - 1:
                time.sleep(self._linger_s)
            while len(batch) < self._max_batch:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    return
                batch.append(item)
            if self._stopping.is_set():
                return
            score_batch(batch)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker after the batch it is scoring; what is still queued is dropped."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        with contextlib.suppress(queue.Full):  # full: the worker sees _stopping after its batch
            self._queue.put_nowait(_STOP)
        thread.join(timeout_s)
        self._thread = None


def score_batch(items: Sequence[Item]) -> None:
    """Score queued items: one model call per variant (a plan change may leave two queued)."""
    groups: dict[Variant, list[Mapping[str, Any]]] = {}
    for variant, features in items:
        groups.setdefault(variant, []).append(features)
    for variant, rows in groups.items():
        score_rows(variant, rows)


def score_one(variant: Variant, features: Mapping[str, Any]) -> None:
    """Score one shadow request and record it on the shadow variant's metrics."""
    score_rows(variant, [features])


def score_rows(variant: Variant, features: Sequence[Mapping[str, Any]]) -> None:
    """Score `features` by `variant` in one model call; record each row on its metrics."""
    m = variant.metrics
    breaker = variant.breaker
    rows: list[list[Any]] = []
    for values in features:
        if breaker.allow():
            rows.append(feature_row(values, variant.columns))
        else:
            m.outcomes["rejected"].inc()
    if rows:
        _score(variant, rows)


def _score(variant: Variant, rows: list[list[Any]]) -> None:
    """One model call for `rows` (each already let through by the breaker)."""
    m = variant.metrics
    breaker = variant.breaker
    n = len(rows)
    start = time.perf_counter()
    try:
        scores = variant.model.predict_rows(rows)
        if len(scores) != n:
            raise ValueError(f"the model returned {len(scores)} scores for {n} rows")
    except Exception:
        if n > 1:
            # Row by row: a row the model refuses (a value that is not a number) is an error
            # of its own, not of the rows batched with it.
            for row in rows:
                _score(variant, [row])
            return
        elapsed = time.perf_counter() - start
        breaker.record(elapsed, ok=False)
        m.duration.observe(elapsed)
        m.outcomes["error"].inc()
        log.exception("shadow scoring failed", extra={"version": variant.version})
        return
    per_row = (time.perf_counter() - start) / n
    for score in scores:
        breaker.record(per_row, ok=True)
        m.duration.observe(per_row)
        m.score.observe(score)
    m.outcomes["ok"].inc(n)
