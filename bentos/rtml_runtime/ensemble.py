"""spec.ensemble: extra models scored beside the primary one, combined by weight.

Each member was digest-checked, signature-checked and warmed up as spec.artifact is
(Runtime._load_checked) and has its own model breaker. Members score in worker threads (ONNX
Runtime releases the GIL) while the primary scores on the event loop, so a stalled member
costs the request at most `spec.ensemble.timeoutMs`, never the member's own time: a late one
is abandoned (cancelled if it had not started) and counted as a failed call by its breaker,
which opens after enough of them and then spares the thread. docs/decisions.md has the cost
of the thread hop measured against scoring members in line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client import Counter

from rtml_runtime.breaker import CircuitBreaker
from rtml_runtime.onnx_model import OnnxModel
from rtml_runtime.variants import feature_row

log = logging.getLogger("rtml.runtime")
# How a model fared in one assessment (rtml_model_calls_total's `outcome`).
CALL_OUTCOMES = ("ok", "error", "open", "late")


@dataclass(frozen=True, slots=True, eq=False)
class Member:
    """One extra model of the ensemble, with its own breaker and call counters."""

    name: str
    model: OnnxModel
    columns: list[str]
    weight: float
    breaker: CircuitBreaker
    calls: Mapping[str, Counter]  # outcome -> rtml_model_calls_total child


def weighted_score(
    scores: Mapping[str, float | None], weights: Mapping[str, float]
) -> float | None:
    """The weighted mean of the models that scored (None when none did): a failing model's
    weight is left out, not counted as a zero."""
    total = sum(weights[n] for n, s in scores.items() if s is not None)
    if total <= 0:
        return None
    return sum(weights[n] * s for n, s in scores.items() if s is not None) / total


def enough_scored(scores: Mapping[str, float | None], required: int) -> bool:
    """Whether at least `required` models scored: fewer is the conservative decision."""
    return sum(s is not None for s in scores.values()) >= required


def scored_call(
    breaker: CircuitBreaker, predict: Callable[[], float], calls: Mapping[str, Counter], name: str
) -> float | None:
    """A model call on this thread behind its breaker: the score, or None (open or raised)."""
    if not breaker.allow():
        calls["open"].inc()
        return None
    start = time.perf_counter()
    try:
        score = predict()
    except Exception:
        breaker.record(time.perf_counter() - start, ok=False)
        calls["error"].inc()
        log.exception("model inference failed", extra={"member": name})
        return None
    breaker.record(time.perf_counter() - start, ok=True)
    calls["ok"].inc()
    return score


def _timed(model: OnnxModel, row: list[float]) -> tuple[float, float]:
    start = time.perf_counter()
    score = model.predict_one(row)
    return score, time.perf_counter() - start


class EnsembleScorer:
    """Scores the members beside the primary model, each under `timeout_s` from the start."""

    def __init__(self, members: Sequence[Member], timeout_s: float) -> None:
        self.members = tuple(members)
        self.timeout_s = timeout_s
        # One worker per member: a stalled member holds only its own thread.
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, len(self.members)), thread_name_prefix="rtml-ensemble"
        )

    async def score(
        self, values: Mapping[str, object], primary: Callable[[], float | None]
    ) -> tuple[float | None, dict[str, float | None]]:
        """(the primary's score, each member's score); None for a model that was open, failed
        or was late. `primary` is called here, on the loop, while the members run."""
        started = time.perf_counter()
        running: list[tuple[Member, Future[tuple[float, float]]]] = []
        scores: dict[str, float | None] = {}
        for m in self.members:
            if not m.breaker.allow():
                m.calls["open"].inc()
                scores[m.name] = None
                continue
            row = feature_row(values, m.columns)
            running.append((m, self.pool.submit(_timed, m.model, row)))
        first = primary()
        waiting = {asyncio.wrap_future(f): (m, f) for m, f in running}
        if waiting:
            left = max(0.0, self.timeout_s - (time.perf_counter() - started))
            await asyncio.wait(waiting, timeout=left)
        for wrapped, (m, f) in waiting.items():
            scores[m.name] = self._settle(m, wrapped, f)
        return first, scores

    def _settle(
        self,
        m: Member,
        wrapped: asyncio.Future[tuple[float, float]],
        f: Future[tuple[float, float]],
    ) -> float | None:
        if not wrapped.done():
            wrapped.cancel()  # also cancels the thread's work if it has not started
            f.cancel()
            m.breaker.record(self.timeout_s, ok=False)
            m.calls["late"].inc()
            return None
        error = wrapped.exception()
        if error is not None:
            m.breaker.record(self.timeout_s, ok=False)
            m.calls["error"].inc()
            log.error("ensemble model failed: %s", error, extra={"member": m.name})
            return None
        score, elapsed = wrapped.result()
        m.breaker.record(elapsed, ok=True)
        m.calls["ok"].inc()
        return score

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
