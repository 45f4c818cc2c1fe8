"""A clock for tests of the runtime's guard rails (breaker, rate limit, cache, deadline)."""

from __future__ import annotations


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
