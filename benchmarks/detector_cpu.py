"""The fraud detector's extra CPU per request, in process: `Runtime.predict` in a loop, no HTTP.

    python benchmarks/detector_cpu.py [--requests 10000] [--rounds 10] [--breakdown]

Builds the fraud example as assessment.py does (benchlib.fixture: its features materialised
into a private Redis, a second Redis for the audit stream), then makes one Runtime per server in
this process, on one event loop: `single` (examples/fraud/model.yaml, a Redis read per request,
L1 cache off) and `detector` (examples/fraud/detector.yaml, its audit in the second Redis), and
with `--breakdown` the detector without its audit, without audit and ensemble, and without
audit, ensemble and rules. Each answers `--requests` requests (random materialised cards) cut
into `--rounds` blocks, the servers taking turns block by block, in an order that alternates;
a block ends when its audit records are written. Reported: each server's CPU time per request
(this process's user + system time, so the feature read's and the audit writes' system calls
count; the Redis servers' own time does not), the median over rounds, and its difference from
`single`.

What it is for: where the detector's extra time goes, with less noise than saturation under
wrk (no HTTP server, no load generator sharing the CPU). It does not replace assessment.py:
the budget is stated for the served path. Writes results/detector-cpu-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "operator"), str(REPO / "bentos"), str(REPO)]

from assessment import detector_manifest  # noqa: E402
from benchlib.fixture import build_fixture, register_features, start_redis  # noqa: E402
from benchlib.procs import Server  # noqa: E402

from rtml.contract import FeastProfile, RuntimeSettings  # noqa: E402
from rtml_runtime.bootstrap import make_reader  # noqa: E402
from rtml_runtime.config import load_config  # noqa: E402
from rtml_runtime.engine import Runtime  # noqa: E402
from rtml_runtime.prometheus_compat import use_in_process_values  # noqa: E402

RESULTS = HERE / "results"
WARMUP = 2000  # requests per server before measuring (the member proves fast in 20)
BREAKDOWN = {
    "detector without audit": ("audit",),
    "without audit, ensemble": ("audit", "ensemble"),
    "without audit, ensemble, rules": ("audit", "ensemble", "rules"),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def runtime_for(manifest: Path, store: Path, redis_url: str, audit_url: str) -> Runtime:
    settings = RuntimeSettings(config=manifest, cache_entries=0, audit_redis_url=audit_url)
    config = load_config(settings, FeastProfile(kind="redis", path=store, redis_url=redis_url))
    runtime = Runtime(config)
    await runtime.start(reader=make_reader(config))
    if not runtime.ready:
        raise SystemExit(f"{manifest.name} did not become ready: {runtime.not_ready_reason}")
    return runtime


async def block(runtime: Runtime, bodies: list[dict[str, Any]], n: int) -> float:
    """CPU µs per request over `n` requests, the audit records of them written."""
    start = time.process_time()
    for i in range(n):
        await runtime.predict(bodies[i % len(bodies)])
    audit = runtime.audit
    while audit is not None and audit.pending:  # noqa: ASYNC110 (the writer has no idle event)
        await asyncio.sleep(0.001)
    if audit is not None:
        await asyncio.sleep(0.02)  # the last write's replies
    return (time.process_time() - start) / n * 1e6


async def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    use_in_process_values()
    fixture = build_fixture(root, log)
    servers: list[Server] = []
    try:
        redis, redis_url = start_redis(root, log)
        servers.append(redis)
        (root / "audit").mkdir()
        audit, audit_url = start_redis(root / "audit", log)
        servers.append(audit)
        register_features(fixture, redis_url, log)
        manifests = {"single": fixture.manifest, "detector": detector_manifest(fixture)}
        if args.breakdown:
            for name, without in BREAKDOWN.items():
                manifests[name] = detector_manifest(fixture, without)
        runtimes = {
            k: await runtime_for(m, fixture.store_path, redis_url, audit_url)
            for k, m in manifests.items()
        }
        # The bodies wrk sends in assessment.py, for 1,000 of the materialised cards.
        cards = random.Random(0).sample(fixture.entity_ids, min(1000, len(fixture.entity_ids)))  # noqa: S311
        bodies = [json.loads(fixture.body_for(c)) for c in cards]
        for runtime in runtimes.values():
            await block(runtime, bodies, WARMUP)
        ensemble = runtimes["detector"].assessor
        fused = ensemble is not None and ensemble.ensemble is not None and ensemble.ensemble.fused
        log(f"the detector's ensemble is {'fused' if fused else 'NOT fused'} (fused.py)")
        per_round = args.requests // args.rounds
        rounds: dict[str, list[float]] = {k: [] for k in runtimes}
        order = list(runtimes)
        for r in range(args.rounds):
            for key in order if r % 2 == 0 else order[::-1]:
                rounds[key].append(await block(runtimes[key], bodies, per_round))
            log(
                f"round {r + 1}/{args.rounds}: "
                + ", ".join(f"{k} {v[-1]:.1f} µs" for k, v in rounds.items())
            )
        for runtime in runtimes.values():
            await runtime.close()
    finally:
        for server in servers:
            server.stop()
    base = statistics.median(rounds["single"])
    return {
        key: {
            "cpu_us_per_request": round(statistics.median(v), 1),
            "extra_us": round(statistics.median(v) - base, 1),
            "rounds": [round(x, 1) for x in v],
        }
        for key, v in rounds.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="per server")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--breakdown", action="store_true")
    args = parser.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with tempfile.TemporaryDirectory(prefix="rtml-detector-cpu-") as tmp:
        out = asyncio.run(measure(args, Path(tmp)))
    print(f"\n| server | CPU µs per request (median of {args.rounds} rounds) | extra |")
    print("| --- | --- | --- |")
    for key, row in out.items():
        print(f"| {key} | {row['cpu_us_per_request']} | {row['extra_us']:+.1f} |")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"detector-cpu-{stamp}.json"
    command = "python benchmarks/detector_cpu.py " + " ".join(sys.argv[1:])
    path.write_text(json.dumps({"command": command.strip(), "servers": out}, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
