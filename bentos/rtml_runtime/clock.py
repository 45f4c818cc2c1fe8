"""Time as a dependency, so the guard rails can be tested without sleeping."""

from __future__ import annotations

import time
from typing import Final, Protocol


class Clock(Protocol):
    """A monotonic time source in seconds: only differences between readings mean anything."""

    def monotonic(self) -> float: ...


class SystemClock:
    """The process's monotonic clock; immune to wall-clock jumps (NTP, DST)."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK: Final[Clock] = SystemClock()
