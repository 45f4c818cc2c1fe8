"""Servers compared within one run, loaded in turn in short slices (docs/benchmark-noise.md).

Every server of the comparison is started first (idle, pinned to the same CPU); then, for each
concurrency, `rounds` rounds each give every server one wrk slice of `slice_s` seconds, the
order rotating from round to round. A slice's numbers sit a few seconds from the other servers'
slices of the same round, so a round's ratio (candidate ÷ baseline) compares the servers under
the same steal and the same neighbours, and the median over rounds keeps a burst of either from
deciding a target. Before this, each server had its three steps (30 s) to itself, one server
after the other: on this VM, whose steal moves between ~1% and ~37% within minutes, a run's
ratios moved by more than the 5-10% the targets judge (RESULTS.md "Noise").

Each server's step keeps the keys of a sequential step (`rps`, `p50_ms`, `p99_ms`, ...):
requests and req/s pooled over its slices, latency percentiles the median of its slices', the
disturbance measures the largest of its slices'; the slices themselves are kept under `slices`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from benchlib.fixture import Fixture
from benchlib.measure import (
    CONCURRENCY,
    SATURATION,
    Measured,
    ServerError,
    failed,
    finish,
    start,
    stop,
    timed_wrk,
)
from benchlib.wrk import LoadError

SLICE_KEYS = ("requests", "rps", "p50_ms", "p99_ms", "steal_share", "server_cpu_share")


def order(keys: Sequence[int], round_index: int) -> list[int]:
    """The servers' order in a round: rotated by one each round, so each takes each place."""
    n = round_index % len(keys)
    return [*keys[n:], *keys[:n]]


def pooled(slices: list[dict[str, Any]]) -> dict[str, Any]:
    """A step's record from its slices: requests and their rate pooled, percentiles their
    median, the CPU shares their mean, the worst disturbance."""
    requests = sum(s["requests"] for s in slices)
    seconds = sum(s["requests"] / s["rps"] for s in slices if s["rps"])
    out: dict[str, Any] = {
        "concurrency": slices[0]["concurrency"],
        "duration_s": sum(s["duration_s"] for s in slices),
        "requests": requests,
        "rps": requests / seconds if seconds else 0.0,
        "non_2xx": sum(s["non_2xx"] for s in slices),
        "socket_errors": sum(s["socket_errors"] for s in slices),
    }
    for key in ("p50_ms", "p75_ms", "p90_ms", "p99_ms"):
        out[key] = statistics.median(s[key] for s in slices)
    for key in (
        "server_cpu_share",
        "load_cpu_share",
        "foreign_cpu_share",
        "foreign_load_cpu_share",
        "steal_share",
    ):
        out[key] = round(statistics.fmean(s[key] for s in slices), 3)
    out["disturbance"] = max(s["disturbance"] for s in slices)
    out["slices"] = [
        {"round": s["round"], **{k: s[k] for k in SLICE_KEYS}, "disturbance": s["disturbance"]}
        for s in slices
    ]
    return out


def interleave(
    servers: Sequence[Measured],
    concurrencies: Sequence[int],
    rounds: int,
    slice_s: float,
    redis_pid: int | None,
    log: Callable[[str], None],
) -> None:
    """Load every (started) server in turn, `rounds` slices each per concurrency; each
    server's `out[f"c{c}"]` gets its pooled step. A wrk failure raises LoadError."""
    for c in concurrencies:
        slices: list[list[dict[str, Any]]] = [[] for _ in servers]
        for r in range(rounds):
            for i in order(list(range(len(servers))), r):
                m = servers[i]
                record, disturbance = timed_wrk(
                    m.server, m.base_url, m.script, c, slice_s, redis_pid
                )
                slices[i].append(record | {"round": r, "disturbance": round(disturbance, 3)})
        for m, own in zip(servers, slices, strict=True):
            m.out[f"c{c}"] = pooled(own)
        log(
            f"    c={c}: "
            + "; ".join(
                f"{m.config.key} {m.out[f'c{c}']['rps']:.0f} req/s, "
                f"p99 {m.out[f'c{c}']['p99_ms']:.3f} ms"
                for m in servers
            )
        )


def measure_together(
    measured: Sequence[Measured],
    fixtures: Sequence[Fixture],
    rounds: int,
    duration_s: float,
    log: Callable[[str], None],
    then: Callable[[list[Measured]], None] | None = None,
    errors: tuple[type[Exception], ...] = (ServerError, LoadError),
) -> None:
    """One run: start every server (one that fails is marked and left out), load the started
    ones in turn, `duration_s` per server and step as `rounds` slices, finish them, `then`
    whatever the caller measures while they still run; every server stopped at the end."""
    started: list[Measured] = []
    try:
        for m, fixture in zip(measured, fixtures, strict=True):
            try:
                start(m, fixture)
                started.append(m)
            except errors as e:
                failed(m, e, log)
        try:
            redis_pid = fixtures[0].redis_pid if fixtures else None
            interleave(started, CONCURRENCY, rounds, duration_s / rounds, redis_pid, log)
            for m in started:
                finish(m)
            if then is not None:
                then(started)
        except errors as e:
            for m in started:
                failed(m, e, log)
    finally:
        for m in measured:
            stop(m)


def round_values(run: dict[str, Any], step: str, metric: str) -> dict[int, float]:
    """A run's METRIC per round at STEP (e.g. "c1", "p99_ms"), from its slices."""
    rec = run.get(step) or {}
    return {s["round"]: s[metric] for s in rec.get("slices", []) if s.get(metric) is not None}


def saturation_by_round(run: dict[str, Any]) -> dict[int, float]:
    """A run's saturation per round: the larger req/s of its SATURATION steps' slices."""
    out: dict[int, float] = {}
    for c in SATURATION:
        for r, v in round_values(run, f"c{c}", "rps").items():
            out[r] = max(out.get(r, 0.0), v)
    return out


def round_pairs(
    base_runs: list[dict[str, Any]],
    other_runs: list[dict[str, Any]],
    values: Callable[[dict[str, Any]], dict[int, float]],
) -> list[tuple[float, float]]:
    """(baseline, other) per round of every run both measured (paired by run and round)."""
    pairs = []
    for base, other in zip(base_runs, other_runs, strict=False):
        if base.get("run") != other.get("run") or "error" in base or "error" in other:
            continue
        b, o = values(base), values(other)
        pairs += [(b[r], o[r]) for r in sorted(b.keys() & o.keys())]
    return pairs


def spread(values: list[float]) -> dict[str, float]:
    """The median and the quartiles of some per-round numbers (len >= 1)."""
    if len(values) < 2:
        return {"median": values[0], "q1": values[0], "q3": values[0], "n": len(values)}
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "n": len(values)}
