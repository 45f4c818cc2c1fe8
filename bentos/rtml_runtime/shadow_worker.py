"""The shadow child process (shadow.py starts it): read rows from a pipe, score them in
micro-batches with the candidate, report what they came to. Under SCHED_IDLE (nice 19 where that
is refused), so on a shared core the kernel hands the CPU to the serving process as soon as it
needs it.

The micro-batches (docs/traffic-split.md): wait for a row, sleep `lingerS` (5 ms) when fewer
than a batch are queued, take what is queued (up to `maxBatch`, 64), score it with one ONNX
Runtime call. What it scored is tallied (histogram buckets included) and reported every
`reportS` (100 ms): after the batch that makes a report due, or by a wait for rows that times
out when it is due. Exits at the end of its input (the serving process closed the pipe or is
gone) or on SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from rtml.artifacts import read_verified
from rtml.logs import configure_logging
from rtml_runtime.breaker import CircuitBreaker, State
from rtml_runtime.onnx_model import OnnxModel
from rtml_runtime.shadow import ShadowTally, score_rows

log = logging.getLogger("rtml.runtime.shadow")


def read_rows(
    fd: int, pending: bytearray, width: int, wait: bool, timeout: float | None = None
) -> bool:
    """Append what the pipe holds to `pending` (waiting for something when `wait`, at most
    `timeout` seconds); False at the end of the input."""
    if wait and not select.select([fd], [], [], timeout)[0]:
        return True
    while True:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        if not data:
            return False
        pending += data


def lower_priority() -> str:
    """Give the CPU to the serving process whenever it wants it; returns the policy set.

    SCHED_IDLE, where Linux allows it: a waking normal task always preempts an idle-class one
    at once (the scheduler's wake-up check), while nice 19 only lowers a task's weight, and a
    request arriving while the child ran could wait a few milliseconds on a shared core (the
    c=1 p99 of the benchmark). Lowering one's own policy needs no privilege."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, OSError):  # not Linux, or a seccomp profile that refuses it
        with contextlib.suppress(OSError):
            os.nice(19)
        return "nice 19"


def run(config: dict[str, Any]) -> None:
    policy = lower_priority()
    log.info("shadow worker scheduling: %s", policy, extra={"policy": policy})
    path = Path(config["model"])
    data = read_verified(path, str(path), config["sha256"], None)
    name, column = config.get("output") or (None, None)
    model = OnnxModel(path, data=data, sha256=config["sha256"], output=(name, column))
    columns = config["columns"]

    def changed(dependency: str, old: State, new: State) -> None:
        log.warning(
            "circuit breaker changed state",
            extra={"dependency": dependency, "variant": "shadow", "from": old.name, "to": new.name},
        )

    breaker = CircuitBreaker("model", **config["breaker"], on_state_change=changed)
    rows_fd, results_fd = int(config["rowsFd"]), int(config["resultsFd"])
    max_batch, linger_s = int(config["maxBatch"]), float(config["lingerS"])
    os.set_blocking(rows_fd, False)
    report_s = float(config.get("reportS", 0.0))
    width = 8 * len(columns)
    pending = bytearray()
    open_input = True
    tally = ShadowTally()
    reported = time.monotonic()

    def report() -> None:
        nonlocal tally, reported
        data = tally.encode()
        while data:
            data = data[os.write(results_fd, data) :]
        tally, reported = ShadowTally(), time.monotonic()

    while open_input or len(pending) >= width:
        if len(pending) < width:
            # Idle: wait for rows, but no longer than the next report is due.
            due = None if not tally.rows else max(0.0, reported + report_s - time.monotonic())
            open_input = read_rows(rows_fd, pending, width, wait=True, timeout=due)
            if open_input and len(pending) < width:
                report()  # timed out waiting: what was scored goes out now
                continue
            if len(pending) // width < max_batch and linger_s > 0 and open_input:
                time.sleep(linger_s)
                open_input = read_rows(rows_fd, pending, width, wait=False)
            if not open_input:
                return  # the serving process is gone or closed the queue: drop what is left
        n = min(len(pending) // width, max_batch)
        rows = np.frombuffer(bytes(pending[: n * width]), dtype="<f8").reshape(n, len(columns))
        del pending[: n * width]
        score_rows(model, breaker, rows, tally)
        if time.monotonic() - reported >= report_s:
            report()


def main(argv: list[str]) -> int:
    configure_logging(logging.WARNING)
    try:
        run(json.loads(argv[0]))
    except BrokenPipeError:
        return 0  # the serving process stopped reading: nothing left to report to
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
