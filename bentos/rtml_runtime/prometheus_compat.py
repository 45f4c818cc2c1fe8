"""The one place the runtime reaches into prometheus_client's internals: two of them.

`add_observations`. Why: the shadow child scores rows in another process and sends back what
they came to. With prometheus_client's public API the serving process would replay every row
as two `observe` calls (about 2 µs each, under the GIL, in a thread that competes with the
event loop); the champion's c=1 p99 paid for it (docs/traffic-split.md, "Shadow"). The child
sends bucket counts instead, and `add_observations` adds them to a histogram child in
O(buckets), whatever the rows.

prometheus_client has no public call that adds many observations at once. This uses the
attributes `Histogram.observe` itself uses (`_upper_bounds`, `_buckets`, `_sum`); `check()`
runs at import and raises if a release changed them, so an upgrade fails at start, loudly,
instead of exporting wrong numbers.

`use_in_process_values` (below says why) swaps the module attribute prometheus_client picks
its value class from; `check()` also fails at start if that attribute or class is gone.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from importlib.metadata import version

from prometheus_client import CollectorRegistry, Histogram, values


def bucket_index(upper_bounds: Sequence[float], value: float) -> int | None:
    """The bucket `Histogram.observe` counts `value` in (the first bound >= value), or None
    for NaN, which observe counts in no bucket."""
    if math.isnan(value):
        return None
    return bisect_left(upper_bounds, value)


def upper_bounds(buckets: Sequence[float]) -> list[float]:
    """A histogram's bounds as prometheus_client keeps them: sorted, +Inf last."""
    bounds = [float(b) for b in buckets]
    if not bounds or bounds[-1] != math.inf:
        bounds.append(math.inf)
    return bounds


def add_observations(child: Histogram, counts: Sequence[int], total: float) -> None:
    """Add `counts[i]` observations to bucket i of a labelled histogram `child`, and `total`
    to its sum: what `observe` of each value would have done."""
    buckets = child._buckets
    if len(counts) != len(buckets):
        raise ValueError(f"{len(counts)} bucket counts for a histogram of {len(buckets)} buckets")
    for bucket, n in zip(buckets, counts, strict=True):
        if n:
            bucket.inc(n)
    if total:
        child._sum.inc(total)


def use_in_process_values() -> None:
    """Metrics made from now on in this process keep their values in memory.

    BentoML starts its workers with PROMETHEUS_MULTIPROC_DIR set (for its own metrics, which
    service.py switches off), and `import feast` sets it in the importing process (and so in
    every process that process starts), so prometheus_client backs every value with an mmap'd
    file: each `inc` takes a lock, a getpid() and a write into the map. Measured here: 1.29 µs
    per inc and 2.72 µs per observe, against 0.46 and 1.06 µs in memory; ~13 against ~5 µs per
    prediction with a feature read (4 incs, 3 observes). The runtime's metrics live in its own
    registry, read only by its own /metrics in its one worker process, so the files said
    nothing anyone read.
    """
    values.ValueClass = values.MutexValue


def check() -> None:
    """Fail at start when this prometheus_client keeps values otherwise than assumed."""
    if not hasattr(values, "ValueClass") or not hasattr(values, "MutexValue"):
        raise RuntimeError(
            f"prometheus_client {version('prometheus-client')} has no values.ValueClass or "
            "values.MutexValue, which rtml_runtime.prometheus_compat.use_in_process_values sets"
        )
    registry = CollectorRegistry(auto_describe=True)
    bounds = (0.1, 1.0)
    observed = Histogram("observed", "", ("l",), buckets=bounds, registry=registry).labels("x")
    added = Histogram("added", "", ("l",), buckets=bounds, registry=registry).labels("x")
    observations = [0.05, 0.1, 0.5, 2.0, 2.0]
    counts = [0] * 3
    try:
        if list(added._upper_bounds) != upper_bounds(bounds):
            raise AttributeError("_upper_bounds")
        for v in observations:
            observed.observe(v)
            i = bucket_index(added._upper_bounds, v)
            assert i is not None
            counts[i] += 1
        add_observations(added, counts, sum(observations))
    except (AttributeError, TypeError, ValueError) as e:
        raise RuntimeError(
            f"prometheus_client {version('prometheus-client')} keeps histograms differently "
            f"from what rtml_runtime.prometheus_compat expects ({e})"
        ) from e

    def samples(name: str) -> list[float]:
        return [
            s.value
            for metric in registry.collect()
            if metric.name == name
            for s in metric.samples
            if not s.name.endswith("_created")
        ]

    if samples("observed") != samples("added"):
        raise RuntimeError(
            "prometheus_client's histograms no longer add up as rtml_runtime.prometheus_compat "
            f"expects: observe gives {samples('observed')}, adding counts gives "
            f"{samples('added')}"
        )


check()
