"""The traffic timeout BentoML wraps around every request, without a timer per request.

BentoML 1.4.40's `TimeoutMiddleware` answers 504 when a request has not started its response
within `traffic.timeout`. Per request it creates a future, a task to run the app in, and a
`loop.call_later` timer that it never cancels: the timer, the future and their context stay
alive for the whole timeout after the response has gone. rtml sets the timeout to the Model's
deadline + 1 s; with the benchmarks' 10 s deadline at 1,800 req/s that was ~20,000 live
timers, futures and contexts in the GC's oldest generation, full collections of 48 ms, and a
soak p99 of 470 ms (docs/runtime.md). `traffic.timeout` cannot be switched off (it must be > 0).

`SweptTimeout` keeps the same contract — a 504 when no response has started within the
timeout, the app cancelled — with one sweep every `tick` seconds over the requests in flight,
and only while there are any. Per request it costs a dict entry; the app runs in the request's
own task. service.py installs it in BentoML's place (bentoml is pinned; tests check the swap).
"""

from __future__ import annotations

import asyncio
from typing import Any

from rtml_runtime.app import _send_json
from rtml_runtime.errors import RequestError


class SweptTimeout:
    def __init__(self, app: Any, timeout: float, tick: float = 0.1) -> None:
        self.app = app
        self.timeout = timeout
        self.tick = max(min(tick, timeout / 2), 0.001)
        self._due: dict[asyncio.Task[Any], float] = {}  # request task -> when it expires
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweep_handle: asyncio.TimerHandle | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        task = asyncio.current_task()
        if scope["type"] != "http" or task is None:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started = False

        async def send_started(message: dict[str, Any]) -> None:
            nonlocal started
            if not started:
                started = True
                self._due.pop(task, None)  # like BentoML's: only the response's start is timed
            await send(message)

        self._due[task] = loop.time() + self.timeout
        if self._sweep_handle is None:
            self._sweep_handle = loop.call_later(self.tick, self._sweep, loop)
        try:
            await self.app(scope, receive, send_started)
        except asyncio.CancelledError:
            if task not in self._expired:
                raise  # cancelled by someone else (the client went away, shutdown)
            task.uncancel()
            if not started:
                error = RequestError(
                    504,
                    "deadline_exceeded",
                    f"no response started within the server's traffic timeout ({self.timeout} s)",
                )
                await _send_json(send, 504, error.body())
        finally:
            self._due.pop(task, None)
            self._expired.discard(task)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for task, due in list(self._due.items()):
            if due <= now:
                del self._due[task]
                self._expired.add(task)
                task.cancel()
        self._sweep_handle = loop.call_later(self.tick, self._sweep, loop) if self._due else None

    @property
    def in_flight(self) -> int:
        """Requests whose response has not started (for tests)."""
        return len(self._due)
