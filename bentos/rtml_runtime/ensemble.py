"""spec.ensemble: extra models scored beside the primary one, combined by weight.

Each member was digest-checked, signature-checked and warmed up as spec.artifact is
(Runtime._load_checked) and has its own model breaker. Members score in worker threads (ONNX
Runtime releases the GIL) while the primary scores on the event loop's thread, which then
joins them: a stalled member holds the loop at most `spec.ensemble.timeoutMs` (as long as
scoring in line would hold it, but bounded), never the member's own time. A late one is
abandoned (cancelled if it had not started) and counted as a failed call by its breaker, which
opens after enough of them and then spares the thread.

Measured (benchmarks/ensemble_cost.py, fraud model + one member, one row): in line 30 µs,
joined from a thread 135 µs, awaited through asyncio 185 µs. In line cannot cut a stalled
member off; awaiting costs a further ~50 µs of loop wake-ups for no gain, since the loop
has nothing else to do for this request while the member scores.

So a member that has proved fast is scored in line, after the primary: once its last
`INLINE_AFTER` calls in a row each took at most `FAST_SHARE` of the timeout. A slow or failed
call in line sends it back to its thread at once. What that gives up: the first stalled call
after a fast streak holds the loop for its own time (as the primary's in-line call always
could), not at most the timeout; every later one is cut off again. Members that read the
primary's inputs are then scored with it in one fused session (fused.py): 20 µs for both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client import Counter

from rtml_runtime.breaker import CircuitBreaker, State
from rtml_runtime.fused import FusedModels
from rtml_runtime.onnx_model import OnnxModel
from rtml_runtime.variants import feature_row

log = logging.getLogger("rtml.runtime")
# How a model fared in one assessment (rtml_model_calls_total's `outcome`).
CALL_OUTCOMES = ("ok", "error", "open", "late")
# A member whose last INLINE_AFTER calls in a row each took at most FAST_SHARE of the timeout
# is scored in line (the module's docstring says why and what it gives up).
INLINE_AFTER = 20
FAST_SHARE = 0.1


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

    def __init__(
        self, members: Sequence[Member], timeout_s: float, fused: FusedModels | None = None
    ) -> None:
        """`fused`: the primary and every member in one session (fused.py), or None."""
        self.members = tuple(members)
        self.fused = fused
        if fused is not None:
            assert [m.model for m in self.members] == list(fused.models[1:])
        self.timeout_s = timeout_s
        self.fast_s = timeout_s * FAST_SHARE
        # Fast calls in a row per member (only the event loop's thread reads or writes it).
        self.streak = {m.name: 0 for m in self.members}
        # One worker per member: a stalled member holds only its own thread.
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, len(self.members)), thread_name_prefix="rtml-ensemble"
        )

    def inline(self, m: Member) -> bool:
        """Whether `m` is scored in line on this request (it has proved fast)."""
        return self.streak[m.name] >= INLINE_AFTER

    def fused_score(
        self,
        model: OnnxModel,
        row: list[float],
        breaker: CircuitBreaker,
        primary_calls: Mapping[str, Counter],
    ) -> tuple[float | None, dict[str, float | None]] | None:
        """Every model in one call of the fused session, when `model` is the primary it was
        built with, every breaker is closed and every member has proved fast (so each would
        have been scored in line, one after the other); else, or when the call raises, None:
        then `score` calls them one by one and each breaker sees its own outcome."""
        fused = self.fused
        if fused is None or fused.models[0] is not model or breaker.state is not State.CLOSED:
            return None
        for m in self.members:
            if m.breaker.state is not State.CLOSED or not self.inline(m):
                return None
        start = time.perf_counter()
        try:
            first, *rest = fused.predict_one(row)
        except Exception:
            log.warning("the fused ensemble call failed: scoring the models one by one")
            return None
        elapsed = time.perf_counter() - start
        breaker.record(elapsed, ok=True)
        primary_calls["ok"].inc()
        scores: dict[str, float | None] = {}
        for m, score in zip(self.members, rest, strict=True):
            scores[m.name] = self._in_line_result(m, score, elapsed)
        return first, scores

    def score(
        self, values: Mapping[str, object], primary: Callable[[], float | None]
    ) -> tuple[float | None, dict[str, float | None]]:
        """(the primary's score, each member's score); None for a model that was open, failed
        or was late. `primary` is called on this thread while the members run in theirs; then
        each member is joined for what is left of `timeout_s`. A member that has proved fast
        is scored after the primary, on this thread."""
        started = time.perf_counter()
        running: list[tuple[Member, Future[tuple[float, float]]]] = []
        in_line: list[tuple[Member, list[float]]] = []
        scores: dict[str, float | None] = {}
        for m in self.members:
            if not m.breaker.allow():
                m.calls["open"].inc()
                scores[m.name] = None
                continue
            row = feature_row(values, m.columns)
            if self.inline(m):
                in_line.append((m, row))
            else:
                running.append((m, self.pool.submit(_timed, m.model, row)))
        first = primary()
        for m, row in in_line:
            scores[m.name] = self._in_line(m, row)
        for m, f in running:
            left = max(0.0, self.timeout_s - (time.perf_counter() - started))
            scores[m.name] = self._settle(m, f, left)
        return first, scores

    def _in_line(self, m: Member, row: list[float]) -> float | None:
        try:
            score, elapsed = _timed(m.model, row)
        except Exception as e:
            self._failed(m, "error", e)
            return None
        return self._in_line_result(m, score, elapsed)

    def _in_line_result(self, m: Member, score: float, elapsed: float) -> float | None:
        if elapsed > self.timeout_s:  # answered, but later than a thread would have waited
            self._failed(m, "late")
            return None
        return self._scored(m, score, elapsed)

    def _settle(self, m: Member, f: Future[tuple[float, float]], left_s: float) -> float | None:
        try:
            score, elapsed = f.result(timeout=left_s)
        except TimeoutError:
            f.cancel()  # drops it if its thread had not started it
            self._failed(m, "late")
            return None
        except Exception as e:
            self._failed(m, "error", e)
            return None
        return self._scored(m, score, elapsed)

    def _scored(self, m: Member, score: float, elapsed: float) -> float:
        self.streak[m.name] = self.streak[m.name] + 1 if elapsed <= self.fast_s else 0
        m.breaker.record(elapsed, ok=True)
        m.calls["ok"].inc()
        return score

    def _failed(self, m: Member, outcome: str, error: Exception | None = None) -> None:
        """A failed or late call: counted against the member's breaker, back to its thread."""
        self.streak[m.name] = 0
        m.breaker.record(self.timeout_s, ok=False)
        m.calls[outcome].inc()
        if error is not None:
            log.error("ensemble model failed: %s", error, extra={"member": m.name})

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
