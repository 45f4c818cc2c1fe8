"""Operator-wide loops that visit every Model or Experiment at an interval, in place of Kopf's
per-object timers and daemons.

Kopf puts its finalizer on every object a timer or daemon serves (it must stop the object's
task before the object goes, and nolar/kopf#896 keeps it that way), so a Model would outlive
the operator: after `helm uninstall`, deleting its namespace would hang on the finalizer. A
Ticker keeps no task per object: each round it asks which objects exist now (a Kopf index,
fed by the operator's own watch) and runs one call per object in the handler thread pool,
never two at once for the same object, so one slow object (a Prometheus query timing out)
holds up no other. An object gone from the index is simply not visited again.

A failing visit backs off (rtml.operator.backoff, full jitter from the interval up to a cap):
an object whose visit fails is skipped for a drawn while, and when the API server cannot be
reached at all the whole Ticker pauses, the visits already queued in this round included, so
an outage costs a few requests per pause rather than one per object per round. A success
resets both. docs/outages.md.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Executor
from functools import partial
from typing import Generic, TypeVar

from rtml.operator.backoff import Backoff, Random, after_failure

log = logging.getLogger("rtml.operator")
K = TypeVar("K", bound=Hashable)
DEFAULT_BACKOFF_CAP = 300.0


class VisitError(Exception):
    """A visit failed for a reason a later try may not have: logged in one line, backed off.

    `unreachable`: the API server could not be reached at all, so every other visit would
    fail now too (the Ticker pauses) and the failure says nothing about this object.
    """

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class Ticker(Generic[K]):
    """Calls `work(key)` for every key `due()` gives, every `interval` seconds."""

    def __init__(
        self,
        name: str,
        interval: float,
        work: Callable[[K], None],
        *,
        initial_delay: float = 0.0,
        backoff_cap: float = DEFAULT_BACKOFF_CAP,
        clock: Callable[[], float] = time.monotonic,
        rand: Random = random.random,
    ) -> None:
        self.name = name
        self.interval = interval
        self.initial_delay = initial_delay
        self.work = work
        self.backoff_cap = max(backoff_cap, interval)
        self.clock = clock
        self.rand = rand
        self.in_flight: dict[K, asyncio.Future[None]] = {}
        self.backoffs: dict[K, Backoff] = {}  # only keys whose last visit failed
        self.paused = Backoff()  # the whole Ticker, while the API server is unreachable
        self._lock = threading.Lock()  # visits settle in the pool's threads

    def _next(self, state: Backoff, now: float) -> Backoff:
        return after_failure(state, now, base=self.interval, cap=self.backoff_cap, rand=self.rand)

    def _guarded(self, key: K) -> None:
        if not self.paused.ready(self.clock()):
            return  # queued before the pause began: the round after the pause visits it
        try:
            self.work(key)
        except VisitError as e:
            self._failed(key, str(e), unreachable=e.unreachable)
        except Exception:
            # A bug in one object's visit stops no other; it backs off like any failure.
            log.exception("a periodic visit failed", extra={"ticker": self.name, "key": key})
            self._failed(key, None, unreachable=False)
        else:
            self._succeeded(key)

    def _failed(self, key: K, message: str | None, *, unreachable: bool) -> None:
        with self._lock:
            now = self.clock()
            if unreachable:
                # Not this object's fault: only the Ticker backs off, so no object is left
                # with a long wait of its own when the API server returns.
                if self.paused.ready(now):  # visits failing in the same burst count once
                    self.paused = self._next(self.paused, now)
                    log.warning(
                        "the API server is unreachable: the periodic visits pause",
                        extra={"ticker": self.name, "error": message,
                               "failures": self.paused.failures,
                               "retryInSeconds": round(self.paused.not_before - now, 1)},
                    )  # fmt: skip
                return
            state = self.backoffs[key] = self._next(self.backoffs.get(key, Backoff()), now)
        if message is not None:
            log.warning(
                "a periodic visit failed; it will be retried",
                extra={"ticker": self.name, "key": key, "error": message,
                       "failures": state.failures,
                       "retryInSeconds": round(max(state.not_before - now, 0.0), 1)},
            )  # fmt: skip

    def _succeeded(self, key: K) -> None:
        with self._lock:
            self.backoffs.pop(key, None)
            if self.paused.failures:
                log.info("the API server answers again: the periodic visits resume",
                         extra={"ticker": self.name})  # fmt: skip
                self.paused = Backoff()

    def start_round(
        self, keys: Iterable[K], submit: Callable[[Callable[[], None]], asyncio.Future[None]]
    ) -> list[K]:
        """Submits a visit for each key not still being visited nor backing off; returns the
        keys started."""
        keys = list(keys)
        now = self.clock()
        self.in_flight = {k: f for k, f in self.in_flight.items() if not f.done()}
        with self._lock:
            for gone in self.backoffs.keys() - set(keys):
                del self.backoffs[gone]  # deleted objects: forget their failures
            if not self.paused.ready(now):
                return []
            waiting = {k for k, state in self.backoffs.items() if not state.ready(now)}
        started = []
        for key in keys:
            if key in self.in_flight or key in waiting:
                continue  # still running (skip this round, as a timer would), or backing off
            self.in_flight[key] = submit(partial(self._guarded, key))
            started.append(key)
        return started

    async def run(self, due: Callable[[], Iterable[K]], executor: Callable[[], Executor]) -> None:
        """Forever (until cancelled). `due` runs in the event loop, where Kopf updates its
        indices, so it reads a consistent snapshot; `executor` is read each round."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.initial_delay)
        while True:
            try:
                self.start_round(list(due()), partial(loop.run_in_executor, executor()))
            except Exception:
                log.exception("a periodic round failed", extra={"ticker": self.name})
            await asyncio.sleep(self.interval)
