"""A per-replica token bucket: spec.rateLimit, answered with 429 when empty."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rtml_runtime.clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from rtml.api.model import RateLimit

# Refills accumulate float error; a billionth of a token must not cost a whole permit.
_EPSILON = 1e-9


class TokenBucket:
    """Holds up to ``burst`` tokens, refilled continuously at ``rate_per_s``; starts full."""

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int, clock: Clock = SYSTEM_CLOCK) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be positive, not {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock.monotonic()

    @classmethod
    def from_spec(
        cls, spec: RateLimit | None, *, clock: Clock = SYSTEM_CLOCK
    ) -> TokenBucket | None:
        """The bucket spec.rateLimit asks for, or None when the Model is unlimited."""
        if spec is None:
            return None
        burst = (
            spec.burst if spec.burst is not None else max(1, math.ceil(spec.requests_per_second))
        )
        return cls(spec.requests_per_second, burst, clock)

    def _refill(self) -> None:
        now = self._clock.monotonic()
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_s)
            self._last = now

    def try_acquire(self, n: int = 1) -> bool:
        """Take ``n`` tokens if they are all there; never a partial take."""
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")
        self._refill()
        if self._tokens + _EPSILON >= n:
            self._tokens -= n
            return True
        return False

    def retry_after_s(self, n: int = 1) -> float:
        """Seconds until ``n`` tokens are there; infinite when ``n`` exceeds the burst."""
        if n > self.burst:
            return math.inf
        self._refill()
        missing = n - self._tokens
        if missing <= _EPSILON:
            return 0.0
        return missing / self.rate_per_s
