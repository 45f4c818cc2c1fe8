"""Shadow scoring: the candidate scores a sampled share of requests after the champion answered,
in a process of its own.

Why a process (docs/traffic-split.md, "Shadow"): a worker thread in the serving process shares
its GIL, so its Python (batch assembly, the code around the model call, metrics) delayed the
event loop; with micro-batches and nice 19 the champion's c=1 p99 was still 1.30x with 100%
shadow (target 1.10x). Here the request path's whole share of the work is one non-blocking
`os.write` of the row (float64s, in the candidate's column order) to a pipe; the child process
(`rtml_runtime.shadow_worker`, in the idle scheduling class) reads, batches and scores, and
sends each batch's results back through a second pipe. A reader thread in the serving process
records them on the shadow variant's metrics (`/metrics` is served here) at a few µs per row.

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
from rtml_runtime.variants import Variant, feature_row

log = logging.getLogger("rtml.runtime.shadow")
MAX_BATCH = 64
LINGER_S = 0.005  # the child wakes at most once per 5 ms: the writer pays each wake-up
ROW_DTYPE = "d"  # float64: any number a feature holds, within float64's precision
# One result frame: kind, the breaker's state after it (gauge value), rows, seconds; the
# scores of an `ok` frame follow as float64s.
RESULT = struct.Struct("<BBId")
OK, ERROR, REJECTED = 0, 1, 2
PIPE_BUF = 4096  # POSIX: a write of at most this many bytes to a pipe is atomic
_F_SETPIPE_SZ = 1031


# Rows of float64s in the model's column order: a numpy matrix in the child, lists in tests.
Rows = Sequence[Sequence[float]] | np.ndarray


class Scorer(Protocol):
    def predict_rows(self, rows: Rows) -> list[float]: ...


@dataclass
class BatchResults:
    """What scoring one batch came to, as frames for the serving process."""

    frames: list[tuple[int, int, float, list[float]]] = field(default_factory=list)
    breaker_state: int = 0

    def ok(self, per_row_s: float, scores: list[float]) -> None:
        self.frames.append((OK, len(scores), per_row_s, scores))

    def error(self, elapsed_s: float) -> None:
        self.frames.append((ERROR, 1, elapsed_s, []))

    def rejected(self, n: int) -> None:
        self.frames.append((REJECTED, n, 0.0, []))

    def encode(self) -> bytes:
        out = bytearray()
        for kind, n, seconds, scores in self.frames:
            out += RESULT.pack(kind, self.breaker_state, n, seconds)
            if scores:
                out += struct.pack(f"<{len(scores)}d", *scores)
        return bytes(out)


def decode_results(buf: bytes) -> tuple[list[tuple[int, int, int, float, list[float]]], bytes]:
    """Whole frames at the start of `buf` (kind, breaker state, rows, seconds, scores), and
    the bytes of an incomplete last frame."""
    frames = []
    at = 0
    while len(buf) - at >= RESULT.size:
        kind, state, n, seconds = RESULT.unpack_from(buf, at)
        size = RESULT.size + (8 * n if kind == OK else 0)
        if len(buf) - at < size:
            break
        scores = list(struct.unpack_from(f"<{n}d", buf, at + RESULT.size)) if kind == OK else []
        frames.append((kind, state, n, seconds, scores))
        at += size
    return frames, buf[at:]


def score_rows(model: Scorer, breaker: CircuitBreaker, rows: Rows, out: BatchResults) -> None:
    """Score `rows` in one model call, each row let through by the breaker first; a batch the
    model fails is scored again row by row, so a row it refuses (a value that is not a number)
    is the only error of its batch. Each row's duration is the batch's time divided by its
    rows (what a row cost; a batch of one is exactly its latency)."""
    allowed = [row for row in rows if breaker.allow()]
    if len(allowed) < len(rows):
        out.rejected(len(rows) - len(allowed))
    if allowed:
        _score(model, breaker, allowed, out)
    out.breaker_state = breaker.state.gauge


def _score(model: Scorer, breaker: CircuitBreaker, rows: Rows, out: BatchResults) -> None:
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
        out.error(elapsed)
        log.exception("shadow scoring failed")
        return
    per_row = (time.perf_counter() - start) / n
    for _ in scores:
        breaker.record(per_row, ok=True)
    out.ok(per_row, [float(s) for s in scores])


def record_frames(
    variant: Variant, frames: Sequence[tuple[int, int, int, float, list[float]]]
) -> int:
    """Put a child's results on the shadow variant's metrics; the rows they account for."""
    m = variant.metrics
    rows = 0
    for kind, state, n, seconds, scores in frames:
        rows += n
        if kind == OK:
            for score in scores:
                m.duration.observe(seconds)
                m.score.observe(score)
            m.outcomes["ok"].inc(n)
        elif kind == ERROR:
            m.duration.observe(seconds)
            m.outcomes["error"].inc(n)
        else:
            m.outcomes["rejected"].inc(n)
        if variant.breaker_gauge is not None:
            variant.breaker_gauge.set(state)
    return rows


class ShadowProcess:
    """The serving process's end of one shadow child: a pipe of rows out, of results in."""

    def __init__(self, variant: Variant, queue_rows: int, max_batch: int, linger_s: float) -> None:
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
            frames, buf = decode_results(buf + data)
            try:
                self.accounted += record_frames(self.variant, frames)
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

    def __init__(self, size: int, max_batch: int = MAX_BATCH, linger_s: float = LINGER_S) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.size = size
        self.max_batch = max_batch
        self.linger_s = linger_s
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
            self.process = ShadowProcess(variant, self.size, self.max_batch, self.linger_s)

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
