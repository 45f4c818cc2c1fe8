"""Fraud assessment: the detector (3 rules + 2 models + decision + audit) beside the single-model
path, in one run (issue 13; docs/decisions.md).

    python benchmarks/assessment.py [--runs 3] [--duration 10] [--stall-requests 2000]

Builds the fraud example into a temp dir, starts a private redis-server for the features and
materialises the FeatureView (benchlib.fixture, as run.py does), and a second redis-server for
the audit stream. Then, alternating over `--runs`, `rtml serve` of
- `single`: examples/fraud/model.yaml as run.py's `rtml-redis` (a Redis read per request, L1
  cache off), and
- `detector`: examples/fraud/detector.yaml, the same FeatureView and features, its audit stream
  in the second Redis (RTML_AUDIT_REDIS_URL),
each pinned to CPU 0 with wrk, both Redis and this harness on CPU 1, each with the guard rails
run.py removes removed (no rate limit; SLO deadlines and the ensemble's timeout at 10 s, so a
queue at saturation is measured as latency, not answered by a fallback). Each server gets c=1
(p50/p99), c=16 and c=64 (saturation: the larger req/s) from wrk, a random materialised card
per request; a step disturbed by other processes is retried as run.py does (benchlib.measure).

The detector's audit is checked after its load: the stream's length must equal the runtime's
`rtml_audit_records_total{outcome="written"}` and the number of decisions it answered
(`rtml_decisions_total`), with nothing dropped or failed. The last run then measures the
stalled-audit phases against the detector (benchmarks/audit_stall.py: c=1 in alternating blocks
with the audit Redis running and SIGSTOPped, then running again).

Medians over runs and the ratios detector ÷ single are printed, written to
benchmarks/results/assessment-<timestamp>.json, and the "Fraud assessment" section of
RESULTS.md is replaced (only that section).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "operator"), str(REPO / "bentos"), str(REPO)]

from audit_stall import measure_stall  # noqa: E402
from benchlib.configs import BY_KEY, ServerConfig  # noqa: E402
from benchlib.fixture import (  # noqa: E402
    EXAMPLE,
    Fixture,
    build_fixture,
    register_features,
    start_redis,
)
from benchlib.interleave import (  # noqa: E402
    measure_together,
    round_pairs,
    round_values,
    saturation_by_round,
    spread,
)
from benchlib.machine import machine_facts  # noqa: E402
from benchlib.measure import (  # noqa: E402
    Measured,
    ServerError,
    first_body,
    prepare,
    rtml_counters,
)
from benchlib.procs import LOAD_CPU, Server  # noqa: E402
from benchlib.wrk import LoadError  # noqa: E402

RESULTS = HERE / "results"
SECTION = "## Fraud assessment"
CONCURRENCY = (1, 16, 64)
# The budget for the detector's extra work, stated before measuring (docs/decisions.md, "Cost"):
# per request it adds 3 CEL rules (~17 µs together), a second ONNX model joined from its pool
# thread (~180 µs against ~50 µs for the primary alone), the decision and the answer's extra
# fields (~10 µs) and the audit record (~50-100 µs of CPU, amortised over a write): ~0.25-0.3
# ms of CPU on a single-model request of ~0.4 ms (~2,600 req/s on one CPU). Saturation at
# 0.6x allows +0.26 ms of CPU a request; c=1 p50 +0.3 ms the same, p99 a little more.
BUDGET_P50_MS = 0.3  # detector c=1 p50 - single's, at most
BUDGET_P99_MS = 0.5  # detector c=1 p99 - single's, at most
BUDGET_SATURATION = 0.6  # detector saturation ÷ single's, at least
AUDIT_STREAM = "fraud:audit"


def log(message: str) -> None:
    print(message, flush=True)


@dataclasses.dataclass(frozen=True)
class DetectorConfig(ServerConfig):
    """`rtml-redis`'s server for the detector's manifest, its audit in `audit_url`'s Redis."""

    audit_url: str = ""

    def server(self, fixture: Fixture, port: int, log_dir: Path, kserve_python: Path) -> Server:
        server = super().server(fixture, port, log_dir, kserve_python)
        server.env = {**server.env, "RTML_AUDIT_REDIS_URL": self.audit_url}
        return server


def detector_manifest(fixture: Fixture, without: tuple[str, ...] = ()) -> Path:
    """examples/fraud/detector.yaml with the guard rails removed as build_fixture removes them
    from model.yaml, and an audit stream long enough to hold every record of a run; with the
    spec fields in `without` (audit, ensemble, rules) removed for --breakdown."""
    docs = [d for d in yaml.safe_load_all((EXAMPLE / "detector.yaml").read_text()) if d]
    model = next(d for d in docs if d["kind"] == "Model")
    model["spec"].pop("rateLimit", None)
    model["spec"]["slo"] = dict.fromkeys(["p99LatencyMs", "timeoutMs", "featureBudgetMs"], 10_000)
    model["spec"]["ensemble"]["timeoutMs"] = 10_000
    model["spec"]["audit"]["maxLen"] = 100_000_000
    for field in without:
        model["spec"].pop(field)
    path = fixture.root / f"rtml-detector{''.join('-' + w for w in without)}.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def xlen(redis_url: str, stream: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.xlen(stream))
    finally:
        client.close()


def delete_stream(redis_url: str, stream: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(stream)
    finally:
        client.close()


def audit_check(base_url: str, audit_url: str) -> dict[str, Any]:
    """Wait until the writer is idle, then compare the stream with the runtime's counters."""
    deadline = time.monotonic() + 30
    while True:
        counters = rtml_counters(base_url)
        written = counters.get("rtml_audit_records_total:written", 0.0)
        stream = xlen(audit_url, AUDIT_STREAM)
        decisions = counters.get("rtml_decisions_total", 0.0)
        if (stream == written == decisions) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    out = {
        "decisions": decisions,
        "stream_length": stream,
        "written": written,
        "dropped": counters.get("rtml_audit_records_total:dropped", 0.0),
        "failed": counters.get("rtml_audit_records_total:failed", 0.0),
    }
    out["every_answer_audited"] = (
        stream == written == decisions and out["dropped"] == out["failed"] == 0
    )
    return out


def measure_run(
    servers: list[tuple[str, ServerConfig, Fixture]],
    args: argparse.Namespace,
    work_dir: Path,
    audit: tuple[str, int],
    stall: bool,
) -> dict[str, dict[str, Any]]:
    """One run: every server started, then each step of `--duration` per server as
    `--rounds` slices, the servers loaded in turn (benchlib/interleave.py); then the detector's
    audit check and, with `stall`, the stalled-audit phases (before the servers stop)."""
    delete_stream(audit[0], AUDIT_STREAM)
    measured = [
        prepare(config, fx, work_dir, Path(sys.executable), log, quiet=i == 0)
        for i, (_, config, fx) in enumerate(servers)
    ]
    keys = [key for key, _, _ in servers]
    fixtures = [fx for _, _, fx in servers]

    def audited(started: list[Measured]) -> None:
        detector = measured[keys.index("detector")]
        if detector in started:
            detector.out["audit"] = audit_check(detector.base_url, audit[0])
            if stall:
                body = json.loads(first_body(detector.config, fixtures[0]))
                detector.out["stall"] = measure_stall(
                    detector.base_url, audit[1], body, args.stall_requests
                )

    errors = (ServerError, LoadError, OSError)
    measure_together(measured, fixtures, args.rounds, args.duration, log, audited, errors)
    return {key: m.out for key, m in zip(keys, measured, strict=True)}


def by_round(
    runs: dict[str, list[dict[str, Any]]],
    key: str,
    values: Callable[[dict[str, Any]], dict[int, float]],
    how: Callable[[float, float], float],
) -> dict[str, float] | None:
    """how(single's, KEY's) per round of every run (interleaved: the same few seconds), as a
    median and quartiles."""
    pairs = round_pairs(runs["single"], runs[key], values)
    return spread([how(b, o) for b, o in pairs]) if pairs else None


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per server over the runs without an error, and detector against single."""
    med: dict[str, dict[str, float]] = {}
    for key, results in runs.items():
        ok = [r for r in results if "error" not in r]
        med[key] = {
            "c1_p50_ms": statistics.median(r["c1"]["p50_ms"] for r in ok),
            "c1_p99_ms": statistics.median(r["c1"]["p99_ms"] for r in ok),
            "c16_rps": statistics.median(r["c16"]["rps"] for r in ok),
            "c64_rps": statistics.median(r["c64"]["rps"] for r in ok),
            "saturation_rps": statistics.median(r["saturation_rps"] for r in ok),
            "runs": len(ok),
            "disturbed_steps": sum(
                1 for r in ok for c in CONCURRENCY if r[f"c{c}"].get("disturbed")
            ),
        }
    s, d = med["single"], med["detector"]

    def at(step: str, metric: str) -> Callable[[dict[str, Any]], dict[int, float]]:
        return lambda run: round_values(run, step, metric)

    def judged(q: dict[str, float] | None, over_runs: float) -> float:
        return q["median"] if q else over_runs  # results taken before interleaving: the latter

    rounds = {
        "c1_p50_extra_ms": by_round(runs, "detector", at("c1", "p50_ms"), lambda b, o: o - b),
        "c1_p99_extra_ms": by_round(runs, "detector", at("c1", "p99_ms"), lambda b, o: o - b),
        "saturation_ratio": by_round(runs, "detector", saturation_by_round, lambda b, o: o / b),
    }
    # Judged by the medians over rounds (each round: the two servers a few seconds apart);
    # the medians over runs are in the table beside them.
    extra_p50 = judged(rounds["c1_p50_extra_ms"], d["c1_p50_ms"] - s["c1_p50_ms"])
    extra_p99 = judged(rounds["c1_p99_extra_ms"], d["c1_p99_ms"] - s["c1_p99_ms"])
    sat = judged(rounds["saturation_ratio"], d["saturation_rps"] / s["saturation_rps"])
    audited = [r["audit"] for r in runs["detector"] if "audit" in r]
    return {
        "medians": med,
        "ratios": {
            "c1_p50": d["c1_p50_ms"] / s["c1_p50_ms"],
            "c1_p99": d["c1_p99_ms"] / s["c1_p99_ms"],
            "saturation": d["saturation_rps"] / s["saturation_rps"],
            "saturation_by_round": sat,
        },
        "extra_ms": {"c1_p50": extra_p50, "c1_p99": extra_p99},
        "by_round": rounds,
        "budget": {
            "c1_p50_extra_ms_max": BUDGET_P50_MS,
            "c1_p99_extra_ms_max": BUDGET_P99_MS,
            "saturation_ratio_min": BUDGET_SATURATION,
            "c1_p50_met": extra_p50 <= BUDGET_P50_MS,
            "c1_p99_met": extra_p99 <= BUDGET_P99_MS,
            "saturation_met": sat >= BUDGET_SATURATION,
            "every_answer_audited": bool(audited)
            and all(a["every_answer_audited"] for a in audited),
        },
    }


def section(report: dict[str, Any]) -> str:
    """The markdown of RESULTS.md's "Fraud assessment" section."""
    summary, med = report["summary"], report["summary"]["medians"]
    duration = report["args"]["duration"]
    rounds = report["args"].get("rounds", 1)
    spread = summary.get("by_round", {})

    def quartiles(key: str, fmt: str) -> str:
        q = spread.get(key)
        if not q:
            return ""
        return f" (quartiles {fmt.format(q['q1'])} to {fmt.format(q['q3'])} over {q['n']} rounds)"

    b, r, x = summary["budget"], summary["ratios"], summary["extra_ms"]

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = [
        SECTION,
        "",
        "The fraud detector (examples/fraud/detector.yaml: 3 CEL rules, the trees and the",
        "logistic regression as a weighted ensemble, thresholds to a decision, an audit record",
        "per answer in a second Redis) beside the single-model path (examples/fraud/model.yaml",
        "as `rtml-redis`: same FeatureView, a Redis read per request, L1 cache off), both",
        "running in each run, each pinned to CPU 0 (wrk, both Redis and the harness on CPU 1).",
        f"Each step is {rounds} rounds of {duration / rounds:g} s slices per server, the two",
        "loaded in turn (benchlib/interleave.py, docs/benchmark-noise.md); the budget is judged",
        "on the median over every round of every run of the round's difference or ratio",
        "(the servers a few seconds apart). The table gives medians over",
        f"{med['single']['runs']} runs of each server's pooled steps. Taken {report['stamp']}",
        f"with `{report['command']}`.",
        "",
        "| server | c=1 p50 ms | c=1 p99 ms | c=16 req/s | c=64 req/s | saturation req/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key in ("single", "detector"):
        m = med[key]
        lines.append(
            f"| {key} | {m['c1_p50_ms']:.3f} | {m['c1_p99_ms']:.3f} | {m['c16_rps']:.0f} | "
            f"{m['c64_rps']:.0f} | {m['saturation_rps']:.0f} |"
        )
    lines.append(
        f"| detector ÷ single | {r['c1_p50']:.2f}x | {r['c1_p99']:.2f}x | | | "
        f"{r['saturation']:.2f}x |"
    )
    lines += [
        "",
        "Budget for the extra work, stated before measuring (benchmarks/assessment.py,",
        'docs/decisions.md "Cost"):',
        "",
        f"- c=1 p50 at most +{b['c1_p50_extra_ms_max']} ms: {x['c1_p50']:+.3f} ms"
        f"{quartiles('c1_p50_extra_ms', '{:+.3f}')}, {met(b['c1_p50_met'])};",
        f"- c=1 p99 at most +{b['c1_p99_extra_ms_max']} ms: {x['c1_p99']:+.3f} ms"
        f"{quartiles('c1_p99_extra_ms', '{:+.3f}')}, {met(b['c1_p99_met'])};",
        f"- saturation at least {b['saturation_ratio_min']}x the single-model path: "
        f"{r.get('saturation_by_round', r['saturation']):.2f}x"
        f"{quartiles('saturation_ratio', '{:.2f}x')}, {met(b['saturation_met'])};",
        "- every detector answer has its audit record (stream length = "
        '`rtml_audit_records_total{outcome="written"}` = `rtml_decisions_total`, none dropped '
        f"or failed): {met(b['every_answer_audited'])}.",
        "",
        "| run | decisions | audit stream | written | dropped | failed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for i, run in enumerate(report["runs"]["detector"], 1):
        a = run.get("audit")
        if a:
            lines.append(
                f"| {i} | {a['decisions']:.0f} | {a['stream_length']} | {a['written']:.0f} | "
                f"{a['dropped']:.0f} | {a['failed']:.0f} |"
            )
    stall = next((run["stall"] for run in report["runs"]["detector"] if "stall" in run), None)
    if stall:
        lines += [
            "",
            "Stalled audit (benchmarks/audit_stall.py against the detector, last run, c=1;"
            " the running and stopped rows pool alternating blocks of each, then one block"
            " running again):",
            "",
            "| audit Redis | p50 ms | p99 ms | records lost (dropped + failed) |",
            "| --- | --- | --- | --- |",
        ]
        for phase in ("running", "stopped", "resumed"):
            p = stall[phase]
            lines.append(
                f"| {phase} | {p['p50_ms']:.3f} | {p['p99_ms']:.3f} | {p['audit_lost']:.0f} |"
            )
        extra = stall.get("p99_extra_by_round")
        if extra:  # results before the blocks alternated have only the three phases
            lines += [
                "",
                f"p99 with the audit Redis stopped minus running, block by block: median"
                f" {extra['median']:+.3f} ms (quartiles {extra['q1']:+.3f} to {extra['q3']:+.3f},"
                f" {extra['n']} rounds).",
            ]
    return "\n".join(lines) + "\n"


def write_section(results_md: Path, text: str) -> None:
    """Replace (or append) the "Fraud assessment" section; every other section unchanged."""
    current = results_md.read_text()
    start = current.find(SECTION + "\n")
    if start < 0:
        results_md.write_text(current.rstrip("\n") + "\n\n" + text)
        return
    end = current.find("\n## ", start + len(SECTION))
    tail = current[end + 1 :] if end >= 0 else ""
    results_md.write_text(current[:start] + text + ("\n" + tail if tail else ""))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs per server; medians are reported")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per step")
    p.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="each step is this many slices of --duration/ROUNDS s per server, the servers "
        "loaded in turn (benchlib/interleave.py)",
    )
    p.add_argument(
        "--stall-requests", type=int, default=2000, help="c=1 requests per stall phase (0: none)"
    )
    p.add_argument("--no-write", action="store_true", help="leave RESULTS.md as it is")
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also serve the detector without its audit, and without audit and ensemble "
        "(where the extra time goes; not written to RESULTS.md)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python benchmarks/assessment.py", *given])
    os.sched_setaffinity(0, {LOAD_CPU})  # the harness stays off the server's CPU
    runs: dict[str, list[dict[str, Any]]] = {"single": [], "detector": []}
    with tempfile.TemporaryDirectory(prefix="rtml-assess-bench-") as tmp:
        root = Path(tmp)
        fixture = build_fixture(root, log)
        redis, url = start_redis(root, log)
        audit_root = root / "audit"
        audit_root.mkdir()
        audit_redis, audit_url = start_redis(audit_root, log)
        try:
            register_features(fixture, url, log)
            fixture.redis_pid = redis.pid
            single = BY_KEY["rtml-redis"]
            detector = DetectorConfig(
                "rtml-detector",
                "rtml detector: rules + 2 models + decision + audit",
                "rtml",
                features=True,
                audit_url=audit_url,
            )
            detector_fixture = dataclasses.replace(fixture, manifest=detector_manifest(fixture))
            servers = [("single", single, fixture), ("detector", detector, detector_fixture)]
            if args.breakdown:
                for without in (("audit",), ("audit", "ensemble")):
                    fx = dataclasses.replace(fixture, manifest=detector_manifest(fixture, without))
                    key = "detector-without-" + "-".join(without)
                    servers.append((key, single, fx))
                    runs[key] = []
            for i in range(args.runs):
                log(f"run {i + 1}/{args.runs}")
                last = i == args.runs - 1 and args.stall_requests > 0
                results = measure_run(servers, args, root, (audit_url, audit_redis.pid), last)
                for key, result in results.items():
                    result["run"] = i + 1
                    runs[key].append(result)
                    if "error" not in result:
                        log(
                            f"run {i + 1} {key}: c=1 p50 {result['c1']['p50_ms']:.3f} ms, "
                            f"p99 {result['c1']['p99_ms']:.3f} ms; saturation "
                            f"{result['saturation_rps']:.0f} req/s"
                            + (f"; audit {result['audit']}" if "audit" in result else "")
                        )
        finally:
            audit_redis.stop()
            redis.stop()
    if any("error" in r for rs in runs.values() for r in rs):
        log("some runs failed: medians are over the others")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report = {
        "command": command,
        "stamp": stamp,
        "args": vars(args),
        "machine": machine_facts(Path(sys.executable)),
        "runs": runs,
        "summary": summarise(runs),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"assessment-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out.relative_to(REPO)}")
    text = section(report)
    log(text)
    if not args.no_write:
        write_section(HERE / "RESULTS.md", text)
        log("wrote the Fraud assessment section of benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
