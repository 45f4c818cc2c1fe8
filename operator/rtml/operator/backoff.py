"""When a periodic visit may try again after failures: exponential backoff with full jitter.

Full jitter (a uniform draw in [0, min(cap, base * 2**(failures - 1))]) rather than a fixed
exponential: after an API outage, 1,000 Models that failed together would otherwise come back
together, in the same second, each doubling; drawn delays spread them over the whole window.
The random source and the clock are arguments, so the policy is tested without waiting.
docs/outages.md.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

Random = Callable[[], float]  # uniform in [0, 1), as random.random


@dataclass(frozen=True)
class Backoff:
    """How often a visit failed in a row, and when the next may start (monotonic seconds)."""

    failures: int = 0
    not_before: float = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.not_before


def full_jitter(failures: int, *, base: float, cap: float, rand: Random = random.random) -> float:
    """The wait after the `failures`-th failure in a row: 0 when nothing failed."""
    if failures <= 0:
        return 0.0
    ceiling = min(cap, base * 2.0 ** min(failures - 1, 62))  # min: 2**huge overflows a float
    return ceiling * min(max(rand(), 0.0), 1.0)


def after_failure(
    state: Backoff, now: float, *, base: float, cap: float, rand: Random = random.random
) -> Backoff:
    """One more failure: the next try waits a drawn delay from `now`."""
    failures = state.failures + 1
    return Backoff(failures, now + full_jitter(failures, base=base, cap=cap, rand=rand))
