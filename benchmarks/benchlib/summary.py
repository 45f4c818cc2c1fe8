"""Medians over runs, ratios to rtml, and the issue's targets checked against them."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from benchlib.configs import CONFIGS, ServerConfig

METRICS = {
    "c1_p50_ms": ("c1", "p50_ms"),
    "c1_p99_ms": ("c1", "p99_ms"),
    "c16_p50_ms": ("c16", "p50_ms"),
    "c16_p99_ms": ("c16", "p99_ms"),
    "c16_rps": ("c16", "rps"),
    "c64_rps": ("c64", "rps"),
    "saturation_rps": ("saturation_rps", None),
    "ready_s": ("ready_s", None),
    "idle_rss_mib": ("idle_rss_mib", None),
}
HIGHER_IS_BETTER = {"c16_rps", "c64_rps", "saturation_rps"}


def _value(run: dict[str, Any], path: tuple[str, str | None]) -> float | None:
    top, sub = path
    v = run.get(top)
    if sub is not None:
        v = v.get(sub) if isinstance(v, dict) else None
    return float(v) if isinstance(v, int | float) else None


def cpu_us_per_request(run: dict[str, Any], step: str = "c16") -> float | None:
    """The server's CPU time per answered request during STEP (all its processes), in µs."""
    r = run.get(step)
    if not isinstance(r, dict) or not r.get("rps") or "server_cpu_share" not in r:
        return None
    return float(r["server_cpu_share"]) / float(r["rps"]) * 1e6


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Per metric, the median over the runs that have it."""
    out: dict[str, float] = {}
    extra = {"ready_after_handover_s": ("ready_after_handover_s", None)}
    for name, path in {**METRICS, **extra}.items():
        values = [v for r in runs if (v := _value(r, path)) is not None]
        if values:
            out[name] = statistics.median(values)
    cpu = [v for r in runs if (v := cpu_us_per_request(r)) is not None]
    if cpu:
        out["c16_cpu_us"] = statistics.median(cpu)
    return out


def rtml_peer(config: ServerConfig) -> str:
    """The rtml row an anchor is compared with: the same work, with or without the read."""
    return "rtml-redis" if config.features else "rtml"


def ratios(summary: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Every anchor's metrics divided by its rtml peer's (same work)."""
    out: dict[str, dict[str, float]] = {}
    for config in CONFIGS:
        if config.is_rtml or config.key not in summary:
            continue
        peer = summary.get(rtml_peer(config), {})
        row = summary[config.key]
        out[config.key] = {
            m: row[m] / peer[m] for m in METRICS if m in row and m in peer and peer[m]
        }
    return out


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    limit: str
    met: bool | None  # None: not measured


def targets(summary: dict[str, dict[str, float]], soak: dict[str, Any] | None) -> list[Target]:
    """Issue 3's acceptance targets against this run's medians."""
    s = summary
    rr = s.get("rtml-redis", {})
    out: list[Target] = []

    def add(name: str, value: float | None, limit: float | None, fmt: str, cmp: str) -> None:
        if value is None or limit is None:
            out.append(Target(name, "not measured", "", None))
            return
        met = value <= limit if cmp == "<=" else value >= limit
        out.append(Target(name, fmt.format(value), f"{cmp} {fmt.format(limit)}", met))

    add("with Redis read: c=1 p50", rr.get("c1_p50_ms"), 0.45, "{:.3f} ms", "<=")
    add("with Redis read: c=1 p99", rr.get("c1_p99_ms"), 1.0, "{:.3f} ms", "<=")
    for anchor, factor in (("kserve-feast", 3.0), ("bentoml-feast", 6.0)):
        a, r = s.get(anchor, {}).get("saturation_rps"), rr.get("saturation_rps")
        add(
            f"saturation ÷ {anchor}'s",
            r / a if a and r else None,
            factor,
            "{:.2f}x",
            ">=",
        )
    bare, plain = s.get("bare", {}).get("c1_p50_ms"), s.get("rtml", {}).get("c1_p50_ms")
    add(
        "no features: c=1 p50 ÷ bare ASGI's",
        plain / bare if bare and plain else None,
        1.3,
        "{:.2f}x",
        "<=",
    )
    add(
        "idle RSS (with Redis) vs KServe + Feast",
        rr.get("idle_rss_mib"),
        s.get("kserve-feast", {}).get("idle_rss_mib"),
        "{:.0f} MiB",
        "<=",
    )
    bf = s.get("bentoml-feast", {}).get("ready_s")
    add(
        "time to ready (with Redis) vs half of BentoML + Feast's",
        rr.get("ready_s"),
        bf / 2 if bf else None,
        "{:.2f} s",
        "<=",
    )
    out += floor_targets(summary)
    if soak and "first_minute" in soak:
        first, last = soak["first_minute"]["p99_ms"], soak["last_minute"]["p99_ms"]
        add("soak: last-minute p99 ÷ first-minute p99", last / first, 1.2, "{:.2f}x", "<=")
        add(
            "soak: RSS growth, end ÷ start",
            soak["rss_end_mib"] / soak["rss_start_mib"],
            1.1,
            "{:.2f}x",
            "<=",
        )
    return out


# Issue 13: rtml within 1.2x of the floors at c=1 p50, same run.
FLOOR_GOAL = 1.2
# (rtml server, its floor): the BentoML-hosted runtime and the same app under plain uvicorn.
FLOOR_PAIRS = (
    ("rtml-redis", "floor-redis"),
    ("rtml", "bare"),
    ("rtml-redis-uvicorn", "floor-redis"),
    ("rtml-uvicorn", "bare"),
)
# What BentoML's host costs: the BentoML-hosted runtime ÷ the same app under uvicorn.
HOST_PAIRS = (("rtml-redis", "rtml-redis-uvicorn"), ("rtml", "rtml-uvicorn"))
# Servers whose scores must equal on the same requests: (reference, others).
SAME_SCORES = (
    ("rtml-redis", ("floor-redis", "rtml-redis-uvicorn")),
    ("rtml", ("bare", "rtml-uvicorn")),
)


def ratio_of(summary: dict[str, dict[str, float]], top: str, bottom: str) -> dict[str, float]:
    """TOP's medians divided by BOTTOM's, metric by metric (those both have)."""
    a, b = summary.get(top, {}), summary.get(bottom, {})
    return {m: a[m] / b[m] for m in a if b.get(m)}


def floor_targets(summary: dict[str, dict[str, float]]) -> list[Target]:
    """Issue 13's goals: c=1 p50 within 1.2x of the floor, with a Redis read and without; the
    uvicorn-hosted runtime's rows only when it was measured."""
    out: list[Target] = []
    for top, floor in FLOOR_PAIRS:
        uvicorn = top.endswith("-uvicorn")
        if uvicorn and top not in summary:
            continue
        what = "with Redis read" if floor == "floor-redis" else "no features"
        name = f"issue 13: {what}{' (uvicorn-hosted)' if uvicorn else ''}: c=1 p50 ÷ {floor}'s"
        value = ratio_of(summary, top, floor).get("c1_p50_ms")
        if value is None:
            out.append(Target(name, "not measured", "", None))
        else:
            limit = f"<= {FLOOR_GOAL:.2f}x"
            out.append(Target(name, f"{value:.2f}x", limit, value <= FLOOR_GOAL))
    return out


def score_check(runs: dict[str, list[dict[str, Any]]]) -> list[Target]:
    """The floors answer what rtml answers: every sampled score (the same cards, or the same
    plain body, in every run) equal to rtml's, to the last bit of the JSON float."""
    out: list[Target] = []
    for ref, others in SAME_SCORES:
        expected = [r.get("sample_scores") for r in runs.get(ref, [])]
        expected = [e for e in expected if e]
        for other in others:
            got = [r.get("sample_scores") for r in runs.get(other, [])]
            got = [g for g in got if g]
            if not expected or not got:
                continue
            pairs = [
                (e, g)
                for e_run in expected
                for g_run in got
                for e, g in zip(e_run, g_run, strict=True)
            ]
            same = sum(1 for e, g in pairs if e is not None and e == g)
            worst = max(
                (abs(e - g) for e, g in pairs if e is not None and g is not None), default=0.0
            )
            out.append(
                Target(
                    f"{other} answers {ref}'s scores on the same requests",
                    f"{same}/{len(pairs)} equal (max |diff| {worst:.3g})",
                    "all equal",
                    same == len(pairs) and bool(pairs),
                )
            )
    return out
