"""Request deadlines: one budget for the whole request, smaller ones carved out of it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from rtml_runtime.clock import SYSTEM_CLOCK, Clock

T = TypeVar("T")


class DeadlineExceeded(TimeoutError):  # noqa: N818 - reads as the 504 it becomes
    """Our deadline fired; a TimeoutError raised by the awaited work itself is not this."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"no result within {timeout_s * 1000:g} ms")
        self.timeout_s = timeout_s


class Deadline:
    """A point in time a request must finish by, read from an injectable clock."""

    __slots__ = ("_clock", "expires_at")

    def __init__(self, timeout_s: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self.expires_at = clock.monotonic() + timeout_s

    def remaining_s(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.expires_at - self._clock.monotonic())

    def expired(self) -> bool:
        return self._clock.monotonic() >= self.expires_at

    def child(self, budget_s: float) -> float:
        """A sub-step's timeout: its own budget, cut short by what the request has left."""
        return max(0.0, min(self.remaining_s(), budget_s))


async def within(awaitable: Awaitable[T], timeout_s: float) -> T:
    """The awaitable's result, or DeadlineExceeded after ``timeout_s``, with the work cancelled.

    Awaiting under asyncio.timeout cancels the awaited coroutine or task when time is up, so an
    abandoned call cannot keep running (or hold a connection) after the caller has given up.
    """
    timeout = asyncio.timeout(timeout_s)
    try:
        async with timeout:
            return await awaitable
    except TimeoutError as exc:
        if timeout.expired():
            raise DeadlineExceeded(timeout_s) from exc
        raise
