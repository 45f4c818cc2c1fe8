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


class FakeClock:
    """A clock that moves only when a test says so."""

    __slots__ = ("now",)

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward; a monotonic clock never goes back, so neither does this one."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back ({seconds} s)")
        self.now += seconds
