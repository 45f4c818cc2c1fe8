"""The ranking section of benchmarks/RESULTS.md, rebuilt from the newest
results/ranking-*.json of each example (so a run of one example keeps the other's row); the
rest of the file is left as it is. A main run keeps this section too (report.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchlib.report import RANKING_HEADING, _with_section


def newest_per_example(results: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """The newest ranking result of each example; a result without `example` is fraud's (the
    only example before --example)."""
    newest: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in sorted(results.glob("ranking-*.json")):  # timestamps sort in time order
        report = json.loads(path.read_text())
        newest[report["args"].get("example", "fraud")] = (path, report)
    return newest


def command(report: dict[str, Any]) -> str:
    if "command" in report:
        return str(report["command"])
    args = report["args"]
    return (
        f"python benchmarks/ranking.py --runs {args['runs']} --candidates {args['candidates']} "
        f"--repeats {args['repeats']} --warmup {args['warmup']}"
    )


def _runs(report: dict[str, Any], key: str) -> str:
    return ", ".join(f"{r[key]:.1f}" for r in report["runs"])


def ranking_section(newest: dict[str, tuple[Path, dict[str, Any]]]) -> str:
    lines = [
        RANKING_HEADING,
        "",
        "`benchmarks/ranking.py` (README.md, docs/ranking.md): `rtml serve` as `rtml-redis` (a "
        "Redis read per request, L1 cache off, the ranking result cache off) pinned to CPU 0, one "
        "keep-alive client on CPU 1, one request at a time. One ranking `/predict_batch` call of "
        "N candidates for one entity against N single `/predict` calls with the same features, in "
        "the same run; rows/s is N ÷ seconds, medians over runs. The newest run of each example:",
        "",
        "| example | N | one call (runs, ms) | rows/s | N single calls (runs, ms) | rows/s | "
        "ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in sorted(newest):
        _, r = newest[name]
        m, n = r["median"], r["args"]["candidates"]
        lines.append(
            f"| {name} | {n} | {m['batch_call_ms']:.1f} ({_runs(r, 'batch_call_ms')}) | "
            f"{m['batch_rows_per_s']:,.0f} | {m['single_calls_ms']:.1f} "
            f"({_runs(r, 'single_calls_ms')}) | {m['single_rows_per_s']:,.0f} | "
            f"{m['speedup']:.1f}x |"
        )
    lines.append("")
    for name in sorted(newest):
        path, r = newest[name]
        lines.append(f"- {name}: `{command(r)}`; raw numbers `benchmarks/results/{path.name}`.")
    return "\n".join(lines) + "\n"


def write_ranking_md(results: Path, path: Path) -> Path:
    """Put the ranking section into PATH (before "## Floors" when new), the rest untouched."""
    text = path.read_text() if path.exists() else ""
    section = ranking_section(newest_per_example(results))
    path.write_text(_with_section(text, section) if text else section)
    return path
