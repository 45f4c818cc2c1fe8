"""Telling a blocked event loop from a process the machine did not run.

A request answered 504 while its own work took microseconds means the process stood still;
its metrics cannot say why. Two watchers say it in the log: a task on the event loop and a
thread, each waking every `interval_s` and measuring how late it woke. Only the loop late: a
synchronous call held the loop (work to move off it). Both late together: the whole process
was not scheduled (CPU starvation, a paused VM; a matter for the node, not the code).

Rejected: asyncio's debug mode (names the slow callback, but slows every callback) and
py-spy (not in the image, and needs ptrace, which the restricted profile does not allow).
Cost: 20 wake-ups a second, nothing on the request path.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

log = logging.getLogger("rtml.runtime")

INTERVAL_S = 0.1
WARN_S = 0.2  # late by more than this: logged (a request's whole budget is often 100 ms)


def describe_stall(loop_late_s: float, thread_late_s: float) -> str:
    """One sentence for a stall: the loop was `loop_late_s` late, the thread (over the same
    period) at most `thread_late_s`."""
    loop_ms = loop_late_s * 1000
    if thread_late_s >= loop_late_s / 2:
        return (
            f"the process was not scheduled for {loop_ms:.0f} ms (its watcher thread was "
            f"{thread_late_s * 1000:.0f} ms late too): the node's CPU, not the runtime's code"
        )
    return (
        f"the event loop was held for {loop_ms:.0f} ms by a synchronous call (a thread of the "
        f"process ran on time, at most {thread_late_s * 1000:.0f} ms late)"
    )


class StallWatch:
    """The two watchers; `start()` on the running loop, `stop()` at shutdown."""

    def __init__(self, interval_s: float = INTERVAL_S, warn_s: float = WARN_S) -> None:
        self.interval_s = interval_s
        self.warn_s = warn_s
        self.stalls = 0
        self._stop = threading.Event()
        self._thread_lates: list[tuple[float, float]] = []  # (woke at, late by), recent only
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch_loop())
        self._thread = threading.Thread(target=self._watch_thread, name="rtml-stall", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()

    def _watch_thread(self) -> None:
        while not self._stop.is_set():
            asked = time.monotonic()
            time.sleep(self.interval_s)
            woke = time.monotonic()
            with self._lock:
                self._thread_lates.append((woke, woke - asked - self.interval_s))
                del self._thread_lates[:-50]

    def thread_late_between(self, since: float, until: float) -> float:
        with self._lock:
            lates = [late for woke, late in self._thread_lates if since <= woke <= until]
        return max(lates, default=0.0)

    async def _watch_loop(self) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(self.interval_s)
            woke = time.monotonic()
            late = woke - asked - self.interval_s
            if late > self.warn_s:
                self.stalls += 1
                # The thread, starved too, may wake just after the loop: give it one interval.
                await asyncio.sleep(self.interval_s)
                thread_late = self.thread_late_between(asked, woke + self.interval_s)
                log.warning(
                    describe_stall(late, thread_late),
                    extra={
                        "loopLateMs": round(late * 1000),
                        "threadLateMs": round(thread_late * 1000),
                    },
                )
