"""Shadow scoring: the candidate scores a sampled share of requests after the champion answered,
in a process of its own.

Why a process (docs/traffic-split.md, "Shadow"): a worker thread in the serving process shares
its GIL, so its Python (batch assembly, the code around the model call, metrics) delayed the
event loop; with micro-batches and nice 19 the champion's c=1 p99 was still 1.30x with 100%
shadow (target 1.10x). Here the request path's whole share of the work is one non-blocking
`os.write` of the row (float64s, in the candidate's column order) to a pipe; the child process
(`rtml_runtime.shadow_worker`, in the idle scheduling class) reads, batches and scores, and
reports what it scored through a second pipe every 100 ms, bucketed as the histograms count; a
reader thread in the serving process adds each report to the shadow variant's metrics
(`/metrics` is served here) in O(buckets), not O(rows).

The pipe is the bounded queue: its capacity is set to RTML_SHADOW_QUEUE rows (as far as the
kernel allows), and a row that does not fit is dropped and counted
(`rtml_shadow_dropped_total`); the response never waits. One child per shadow variant; a new
shadow plan with another candidate starts a new child and stops the old one, and `close` stops
it at once (what is queued is dropped). The child exits by itself when the serving process
goes away (its pipe reaches end of file).

Rejected: a thread in this process (above), `multiprocessing` (its queues pickle in a feeder
thread that takes the GIL again; its spawn start re-imports the server's `__main__`), an
unbounded queue (memory grows with a slow candidate).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rtml_runtime.breaker import CircuitBreaker
from rtml_runtime.metrics import LATENCY_BUCKETS, SCORE_BUCKETS
from rtml_runtime.prometheus_compat import add_observations, bucket_index, upper_bounds
from rtml_runtime.variants import Variant, feature_row

log = logging.getLogger("rtml.runtime.shadow")
MAX_BATCH = 64
LINGER_S = 0.005  # the child wakes at most once per 5 ms: the writer pays each wake-up
REPORT_S = 0.1  # the child reports what it scored at most this often (one reader wake-up each)
ROW_DTYPE = "d"  # float64: any number a feature holds, within float64's precision
DURATION_BOUNDS = upper_bounds(LATENCY_BUCKETS)
SCORE_BOUNDS = upper_bounds(SCORE_BUCKETS)
# One report: the breaker's state after it (gauge value), rows ok, in error, rejected, the sum of
# their durations and of their scores; then a count per duration bucket and per score bucket.
REPORT = struct.Struct(f"<BIIIdd{len(DURATION_BOUNDS)}I{len(SCORE_BOUNDS)}I")
PIPE_BUF = 4096  # POSIX: a write of at most this many bytes to a pipe is atomic
_F_SETPIPE_SZ = 1031


# Rows of float64s in the model's column order: a numpy matrix in the child, lists in tests.
Rows = Sequence[Sequence[float]] | np.ndarray


class Scorer(Protocol):
    def predict_rows(self, rows: Rows) -> list[float]: ...


@dataclass
class ShadowTally:
    """What the child scored since its last report, as the serving process's histograms count
    it: the child does the bucketing, so recording a report costs the same for 1 row or 1,000
    (prometheus_compat.py says why that matters)."""

    ok: int = 0
    errors: int = 0
    rejected_rows: int = 0
    duration_sum: float = 0.0
    score_sum: float = 0.0
    durations: list[int] = field(default_factory=lambda: [0] * len(DURATION_BOUNDS))
    scores: list[int] = field(default_factory=lambda: [0] * len(SCORE_BOUNDS))
    breaker_state: int = 0

    @property
    def rows(self) -> int:
        return self.ok + self.errors + self.rejected_rows

    def _duration(self, seconds: float, n: int) -> None:
        i = bucket_index(DURATION_BOUNDS, seconds)
        if i is not None:
            self.durations[i] += n
        self.duration_sum += seconds * n

    def record_ok(self, per_row_s: float, scores: Sequence[float]) -> None:
        self.ok += len(scores)
        self._duration(per_row_s, len(scores))
        for score in scores:
            i = bucket_index(SCORE_BOUNDS, score)
            if i is not None:
                self.scores[i] += 1
            self.score_sum += score

    def record_error(self, elapsed_s: float) -> None:
        self.errors += 1
        self._duration(elapsed_s, 1)

    def record_rejected(self, n: int) -> None:
        self.rejected_rows += n

    def encode(self) -> bytes:
        return REPORT.pack(
            self.breaker_state,
            self.ok,
            self.errors,
            self.rejected_rows,
            self.duration_sum,
            self.score_sum,
            *self.durations,
            *self.scores,
        )


def decode_reports(buf: bytes) -> tuple[list[ShadowTally], bytes]:
    """The whole reports at the start of `buf`, and the bytes of an incomplete last one."""
    reports = []
    at = 0
    nd = len(DURATION_BOUNDS)
    while len(buf) - at >= REPORT.size:
        state, ok, errors, rejected, dsum, ssum, *counts = REPORT.unpack_from(buf, at)
        reports.append(
            ShadowTally(ok, errors, rejected, dsum, ssum, counts[:nd], counts[nd:], state)
        )
        at += REPORT.size
    return reports, buf[at:]


def score_rows(model: Scorer, breaker: CircuitBreaker, rows: Rows, out: ShadowTally) -> None:
    """Score `rows` in one model call, each row let through by the breaker first; a batch the
    model fails is scored again row by row, so a row it refuses (a value that is not a number)
    is the only error of its batch. Each row's duration is the batch's time divided by its
    rows (what a row cost; a batch of one is exactly its latency)."""
    allowed = [row for row in rows if breaker.allow()]
    if len(allowed) < len(rows):
        out.record_rejected(len(rows) - len(allowed))
    if allowed:
        _score(model, breaker, allowed, out)
    out.breaker_state = breaker.state.gauge


def _score(model: Scorer, breaker: CircuitBreaker, rows: Rows, out: ShadowTally) -> None:
    n = len(rows)
    start = time.perf_counter()
    try:
        scores = model.predict_rows(rows)
        if len(scores) != n:
            raise ValueError(f"the model returned {len(scores)} scores for {n} rows")
    except Exception:
        if n > 1:
            for row in rows:
                _score(model, breaker, [row], out)
            return
        elapsed = time.perf_counter() - start
        breaker.record(elapsed, ok=False)
        out.record_error(elapsed)
        log.exception("shadow scoring failed")
        return
    per_row = (time.perf_counter() - start) / n
    for _ in scores:
        breaker.record(per_row, ok=True)
    out.record_ok(per_row, [float(s) for s in scores])


def record_reports(variant: Variant, reports: Sequence[ShadowTally]) -> int:
    """Put a child's reports on the shadow variant's metrics; the rows they account for."""
    m = variant.metrics
    rows = 0
    for r in reports:
        rows += r.rows
        add_observations(m.duration, r.durations, r.duration_sum)
        add_observations(m.score, r.scores, r.score_sum)
        for outcome, n in (("ok", r.ok), ("error", r.errors), ("rejected", r.rejected_rows)):
            if n:
                m.outcomes[outcome].inc(n)
        if variant.breaker_gauge is not None:
            variant.breaker_gauge.set(r.breaker_state)
    return rows


class ShadowProcess:
    """The serving process's end of one shadow child: a pipe of rows out, of results in."""

    def __init__(
        self,
        variant: Variant,
        queue_rows: int,
        max_batch: int,
        linger_s: float,
        report_s: float = REPORT_S,
    ) -> None:
        self.variant = variant
        self.width = 8 * len(variant.columns)
        self.submitted = 0
        self.accounted = 0
        rows_r, rows_w = os.pipe()
        results_r, results_w = os.pipe()
        _grow_pipe(rows_w, queue_rows * self.width)
        config = {
            "model": str(variant.model.path),
            "sha256": variant.model.sha256,  # the child loads only the bytes this process did
            "columns": variant.columns,
            "output": list(variant.model.output_spec),  # the same score as the serving process
            "breaker": variant.breaker.settings(),
            "maxBatch": max_batch,
            "lingerS": linger_s,
            "reportS": report_s,
            "rowsFd": rows_r,
            "resultsFd": results_w,
        }
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rtml_runtime.shadow_worker", json.dumps(config)],
                pass_fds=(rows_r, results_w),
                stdin=subprocess.DEVNULL,
                env=_child_env(),
            )
        finally:
            os.close(rows_r)
            os.close(results_w)
        os.set_blocking(rows_w, False)
        self._rows = rows_w
        self._results = results_r
        self._lock = threading.Lock()  # submit (event loop) against close (any thread)
        self._reader = threading.Thread(target=self._read, name="rtml-shadow-results", daemon=True)
        self._reader.start()
        log.info(
            "shadow worker started for %s",
            variant.version,
            extra={"version": variant.version, "pid": self.proc.pid},
        )

    def submit(self, features: Mapping[str, Any]) -> bool:
        try:
            data = struct.pack(
                f"<{len(self.variant.columns)}{ROW_DTYPE}",
                *feature_row(features, self.variant.columns),
            )
        except struct.error:
            # Not a number: the candidate's model would refuse it too; an error of this row.
            self.variant.metrics.outcomes["error"].inc()
            return True
        with self._lock:
            if self._rows < 0:
                return False
            try:
                written = os.write(self._rows, data)
            except (BlockingIOError, BrokenPipeError):
                return False
            if written < len(data):
                # Only a row wider than PIPE_BUF can be cut; finish it, or the framing breaks.
                _write_all(self._rows, data[written:])
        self.submitted += 1
        return True

    @property
    def pending(self) -> int:
        return self.submitted - self.accounted

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                data = os.read(self._results, 65536)
            except OSError:
                return
            if not data:
                break
            reports, buf = decode_reports(buf + data)
            try:
                self.accounted += record_reports(self.variant, reports)
            except Exception:
                log.exception("recording shadow results failed")
        code = self.proc.wait()
        if code not in (0, -15) and self._rows >= 0:
            log.error(
                "the shadow worker for %s exited with code %s; shadow scoring stops",
                self.variant.version,
                code,
                extra={"version": self.variant.version, "exitCode": code},
            )

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the child now: what is queued, and the batch it is scoring, are dropped."""
        with self._lock:
            if self._rows < 0:
                return
            os.close(self._rows)
            self._rows = -1
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout_s)
        with contextlib.suppress(OSError):
            os.close(self._results)


class ShadowScorer:
    """Owns the shadow child of the shadow plan in effect (none without one)."""

    def __init__(
        self,
        size: int,
        max_batch: int = MAX_BATCH,
        linger_s: float = LINGER_S,
        report_s: float = REPORT_S,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.size = size
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.report_s = report_s
        self.process: ShadowProcess | None = None

    def use(self, variant: Variant | None) -> None:
        """Score for `variant` from now on (None: no shadow); a new variant gets a new child."""
        current = self.process
        if current is not None and current.variant is variant:
            return
        self.process = None
        if current is not None:
            current.close()
        if variant is not None:
            self.process = ShadowProcess(
                variant, self.size, self.max_batch, self.linger_s, self.report_s
            )

    def submit(self, variant: Variant, features: Mapping[str, Any]) -> bool:
        """Queue one scoring of `features` by `variant`; False (counted) when it cannot be."""
        proc = self.process
        if proc is None or proc.variant is not variant or not proc.submit(features):
            if variant.dropped is not None:
                variant.dropped.inc()
            return False
        return True

    @property
    def pending(self) -> int:
        """Rows handed to the child whose results have not come back yet."""
        return 0 if self.process is None else self.process.pending

    def close(self) -> None:
        self.use(None)


def _grow_pipe(fd: int, size: int) -> None:
    """Make the pipe hold `size` bytes where the kernel allows (Linux; an unprivileged process
    up to /proc/sys/fs/pipe-max-size, 1 MiB by default); otherwise it holds what it holds."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, max(size, PIPE_BUF))


def _write_all(fd: int, data: bytes) -> None:
    os.set_blocking(fd, True)
    try:
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.set_blocking(fd, False)


def _child_env() -> dict[str, str]:
    """The child imports this package as the server does: BentoML puts the service's folder
    on sys.path, not in PYTHONPATH."""
    paths = [p for p in sys.path if p and Path(p).is_dir()]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
