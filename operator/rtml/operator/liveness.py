"""Whether the operator's watch streams still show life: the decision of the `watching` probe.

A quiet cluster sends no events, so silence alone proves nothing. What a healthy stream does
show, even on a quiet cluster, is recorded per stream (rtml.operator.kopf_compat): every
event, every BOOKMARK the API server sends (about once a minute to a watch asking for them,
as Kopf's do), and every end of a stream, which Kopf re-opens: the API server closes each
after `watching.server_timeout`, and Kopf closes one silent for `watching.inactivity_timeout`.
So a live stream shows life at least every inactivity timeout, plus the time to reconnect; a
stream silent for longer is stuck, and a restart cures it.

Unless the API server cannot be reached: then every stream is silent and a restart cures
nothing (it would only add the kubelet's crash-loop delay to the recovery), so the probe
fails only when the API server answered after the silence began.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping


class WatchActivity:
    """When each watch stream last showed life, and when the API server last answered."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last: dict[str, float] = {}
        self.api_answered: float | None = None
        self._lock = threading.Lock()

    def saw(self, stream: str) -> None:
        now = self.clock()
        with self._lock:
            self._last[stream] = now

    def forget(self, stream: str) -> None:
        with self._lock:
            self._last.pop(stream, None)

    def answered(self) -> None:
        self.api_answered = self.clock()

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._last)


def silent_streams(last: Mapping[str, float], now: float, limit: float) -> list[str]:
    """The streams that showed no life for longer than `limit` seconds, oldest first."""
    return sorted((s for s, t in last.items() if now - t > limit), key=lambda s: last[s])


def watch_problem(
    last: Mapping[str, float], now: float, *, limit: float, api_answered: float | None
) -> str | None:
    """Why the liveness probe should fail, or None.

    `limit`: the inactivity timeout plus the time a reconnect may take; `api_answered`: when
    the API server last answered a request of ours (monotonic seconds).
    """
    silent = silent_streams(last, now, limit)
    if not silent:
        return None
    overdue_since = last[silent[0]] + limit
    if api_answered is None or api_answered < overdue_since:
        return None  # no proof the API server answers since: an outage, not a stuck stream
    names = ", ".join(silent[:3]) + (f" and {len(silent) - 3} more" if len(silent) > 3 else "")
    return (
        f"the watch of {names} showed no event, bookmark or reconnect for "
        f"{now - last[silent[0]]:.0f}s while the API server answers: the watch is stuck"
    )
