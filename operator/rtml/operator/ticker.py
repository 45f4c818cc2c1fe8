"""Operator-wide loops that visit every Model or Experiment at an interval, in place of Kopf's
per-object timers and daemons.

Kopf puts its finalizer on every object a timer or daemon serves (it must stop the object's
task before the object goes, and nolar/kopf#896 keeps it that way), so a Model would outlive
the operator: after `helm uninstall`, deleting its namespace would hang on the finalizer. A
Ticker keeps no task per object: each round it asks which objects exist now (a Kopf index,
fed by the operator's own watch) and runs one call per object in the handler thread pool,
never two at once for the same object, so one slow object (a Prometheus query timing out)
holds up no other. An object gone from the index is simply not visited again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Executor
from functools import partial
from typing import Generic, TypeVar

log = logging.getLogger("rtml.operator")
K = TypeVar("K", bound=Hashable)


class Ticker(Generic[K]):
    """Calls `work(key)` for every key `due()` gives, every `interval` seconds."""

    def __init__(
        self,
        name: str,
        interval: float,
        work: Callable[[K], None],
        *,
        initial_delay: float = 0.0,
    ) -> None:
        self.name = name
        self.interval = interval
        self.initial_delay = initial_delay
        self.work = work
        self.in_flight: dict[K, asyncio.Future[None]] = {}

    def _guarded(self, key: K) -> None:
        try:
            self.work(key)
        except Exception:
            # The next round tries again; a bug in one object's visit stops no other.
            log.exception("a periodic visit failed", extra={"ticker": self.name, "key": key})

    def start_round(
        self, keys: Iterable[K], submit: Callable[[Callable[[], None]], asyncio.Future[None]]
    ) -> list[K]:
        """Submits a visit for each key not still being visited; returns the keys started."""
        self.in_flight = {k: f for k, f in self.in_flight.items() if not f.done()}
        started = []
        for key in keys:
            if key in self.in_flight:
                continue  # the last visit has not finished: skip this round, as a timer would
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
