"""Stopping in seconds, whatever the number of objects (docs/outages.md).

Kopf runs a synchronous handler in its thread pool and shields that call from cancellation so
that no thread is orphaned (kopf/_core/actions/invocation.py): on SIGTERM, every handler call
already queued for the pool still runs, one after another, before its task can end ("... is
cancelled. Will escalate." once each). With 1,000 Models resumed at start-up and 4 threads,
that was about 10 a second, and the operator had not exited after 80 s. The DrainingExecutor
cancels the calls queued and not started; only the few running finish, and a deadline ends
the process if one of those hangs (an unreachable API server).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

log = logging.getLogger("rtml.operator")
P = ParamSpec("P")
T = TypeVar("T")


class DrainingExecutor(ThreadPoolExecutor):
    """The handler thread pool, which `drain()` empties of everything not yet started."""

    draining = False

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        if not self.draining:
            try:
                return super().submit(fn, *args, **kwargs)
            except RuntimeError:
                if not self.draining:
                    raise
        # Stopping: the call is cancelled, as if it had been queued before the drain.
        future: Future[T] = Future()
        future.cancel()
        return future

    def drain(self) -> None:
        """Cancel every queued call; the running ones finish; later submissions are cancelled."""
        self.draining = True
        self.shutdown(wait=False, cancel_futures=True)


def exit_after(seconds: float) -> threading.Timer:
    """Ends the process in `seconds` if it has not ended by itself (a call that hangs in the
    pool, which Python cannot interrupt, would otherwise hold the exit until the kubelet's
    SIGKILL). A daemon thread: it never holds the exit itself."""

    def _exit() -> None:
        log.error("the operator did not stop in time; exiting now", extra={"seconds": seconds})
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(seconds, _exit)
    timer.daemon = True
    timer.start()
    return timer
