"""Sliding windows of a FeatureView's aggregations: their granularity, their bounds, their math.

Pure, shared by the API (which refuses a window it cannot keep exactly) and `rtml stream`
(which keeps the buckets in Redis and aggregates them on read; docs/streaming.md).

A window of `w` seconds with granularity `g` covers the `w / g` buckets ending with the bucket
of the entity's latest event time `T`: bucket `b = floor(t / g)` is in the window when
`floor(T / g) - w / g < b <= floor(T / g)`. The granularity grows with the window, so no window
spans more than `MAX_BUCKETS` buckets (the work of one read):
1 s up to 5 minutes, 1 minute up to 24 hours, 1 hour up to `MAX_WINDOW_S` (30 days).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rtml.api.common import parse_duration

MINUTE = 60
HOUR = 3600
MAX_WINDOW_S = 720 * HOUR  # 30 days: the longest window kept (Go durations have no `d`)
# (largest window, granularity): the first row whose window is at least w's.
GRANULARITIES = ((5 * MINUTE, 1), (24 * HOUR, MINUTE), (MAX_WINDOW_S, HOUR))
MAX_BUCKETS = 24 * HOUR // MINUTE  # 1,440: a 24h window at 1-minute buckets


def window_seconds(window: str) -> int:
    """Whole seconds of a window such as `1m`, `1h` or `24h`; raises ValueError saying why
    it cannot be kept exactly (under 1 s, over 30 days, or not a whole number of buckets)."""
    seconds = parse_duration(window)
    if seconds < 1:
        raise ValueError(f"window {window!r} is shorter than 1s")
    if seconds > MAX_WINDOW_S:
        raise ValueError(f"window {window!r} is longer than {MAX_WINDOW_S // HOUR}h (30 days)")
    whole = round(seconds)
    g = granularity(whole)
    if abs(seconds - whole) > 1e-9 or whole % g:
        unit = {1: "second", MINUTE: "minute", HOUR: "hour"}[g]
        raise ValueError(
            f"window {window!r} must be a whole number of {unit}s "
            f"(its buckets are {g} s wide at this length)"
        )
    return whole


def granularity(seconds: int) -> int:
    """The bucket width, in seconds, of a window this long."""
    for longest, width in GRANULARITIES:
        if seconds <= longest:
            return width
    raise ValueError(f"a window of {seconds} s is longer than {MAX_WINDOW_S} s")


def bucket_of(event_time: float, width: int) -> int:
    """The bucket an event at `event_time` (epoch seconds) falls in."""
    return math.floor(event_time / width)


def in_window(bucket: int, latest: float, window_s: int, width: int) -> bool:
    """Whether `bucket` is inside the window ending with the bucket of time `latest`."""
    last = bucket_of(latest, width)
    return last - window_s // width < bucket <= last


@dataclass(frozen=True, slots=True)
class BucketStats:
    """What one bucket keeps of one event field: events seen, events with the field, their
    sum and their largest value (None until one has the field)."""

    events: int = 0
    count: int = 0
    total: float = 0.0
    largest: float | None = None

    def add(self, value: float | None) -> BucketStats:
        if value is None:
            return BucketStats(self.events + 1, self.count, self.total, self.largest)
        largest = value if self.largest is None else max(self.largest, value)
        return BucketStats(self.events + 1, self.count + 1, self.total + value, largest)


def aggregate(function: str, buckets: Iterable[BucketStats]) -> float | int:
    """count, sum, avg or max over buckets; a window with no value gives 0 (the feature's
    default, as for an entity never seen)."""
    kept = list(buckets)
    if function == "count":
        return sum(b.events for b in kept)
    if function == "sum":
        return sum(b.total for b in kept)
    if function == "avg":
        n = sum(b.count for b in kept)
        return sum(b.total for b in kept) / n if n else 0.0
    if function == "max":
        values = [b.largest for b in kept if b.largest is not None]
        return max(values) if values else 0.0
    raise ValueError(f"unknown function {function!r}: use count, sum, avg or max")


def window_aggregate(
    function: str,
    window_s: int,
    buckets: Mapping[int, BucketStats],
    latest: float,
) -> float | int:
    """One aggregation of one entity as of its latest event time (what `rtml stream` writes)."""
    width = granularity(window_s)
    return aggregate(
        function, (s for b, s in buckets.items() if in_window(b, latest, window_s, width))
    )
