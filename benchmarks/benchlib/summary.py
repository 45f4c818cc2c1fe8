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


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Per metric, the median over the runs that have it."""
    out: dict[str, float] = {}
    extra = {"ready_after_handover_s": ("ready_after_handover_s", None)}
    for name, path in {**METRICS, **extra}.items():
        values = [v for r in runs if (v := _value(r, path)) is not None]
        if values:
            out[name] = statistics.median(values)
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
