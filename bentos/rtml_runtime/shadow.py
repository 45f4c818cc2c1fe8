"""Shadow scoring: the candidate scores a sampled share of requests after the champion answered.

A bounded `queue.Queue` (RTML_SHADOW_QUEUE, default 1,000) drained by one worker thread. The
response never waits: `submit` is a non-blocking put, and a full queue drops the item and
counts it (`rtml_shadow_dropped_total`), so a candidate slower than the traffic costs samples,
never latency or memory. One thread because ONNX Runtime releases the GIL while it runs, the
sessions use one intra-op thread, and the pod has a CPU budget sized for the champion: more
threads would only take more of it. Rejected: an asyncio task per item (its scoring would run
on the event loop, in the response path's time) and an unbounded queue (memory grows with a
slow candidate).

The shadow variant's breaker is used by this thread only (breakers are single-threaded).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Mapping
from typing import Any

from rtml_runtime.variants import Variant, feature_row

log = logging.getLogger("rtml.runtime.shadow")
_STOP = None


class ShadowScorer:
    def __init__(self, size: int) -> None:
        self._queue: queue.Queue[tuple[Variant, Mapping[str, Any]] | None] = queue.Queue(size)
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
        while not self._stopping.is_set():
            item = self._queue.get()
            if item is _STOP:
                return
            score_one(*item)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker after the item it is scoring; what is still queued is dropped."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        with contextlib.suppress(queue.Full):  # full: the worker sees _stopping after its item
            self._queue.put_nowait(_STOP)
        thread.join(timeout_s)
        self._thread = None


def score_one(variant: Variant, features: Mapping[str, Any]) -> None:
    """Score one shadow request and record it on the shadow variant's metrics."""
    m = variant.metrics
    breaker = variant.breaker
    if not breaker.allow():
        m.outcomes["rejected"].inc()
        return
    start = time.perf_counter()
    try:
        score = variant.model.predict_one(feature_row(features, variant.columns))
    except Exception:
        elapsed = time.perf_counter() - start
        breaker.record(elapsed, ok=False)
        m.duration.observe(elapsed)
        m.outcomes["error"].inc()
        log.exception("shadow scoring failed", extra={"version": variant.version})
        return
    elapsed = time.perf_counter() - start
    breaker.record(elapsed, ok=True)
    m.duration.observe(elapsed)
    m.outcomes["ok"].inc()
    m.score.observe(score)
