"""Ranking: rows/s of one 500-candidate /predict_batch call against 500 single /predict calls,
the same server, the same entity and features, in one run.

    python benchmarks/ranking.py [--example ranking|fraud] [--runs 3] [--candidates 500]

`--example` (benchlib.ranking_example): `ranking` (the default) serves examples/ranking, the
LightGBM ranker as onnxmltools exported it, for the request's user and the catalogue's first N
items; `fraud` serves examples/fraud for a card and N synthetic transactions (the earlier runs).
Builds the example into a temp dir, starts a private redis-server and materialises the
FeatureView (benchlib.fixture, as run.py does), then `rtml serve` as `rtml-redis` (a Redis read
per request, L1 cache off, the ranking result cache off) pinned to CPU 0, with
RTML_MAX_BATCH_ROWS at the candidate count. The client runs on CPU 1 over one keep-alive
connection, one request at a time (closed loop, concurrency 1): what is compared is the work per
row, not a server's saturation. Per run: `--repeats` ranking calls (their median time) and one
pass of the single calls; rows/s is candidates / seconds. Medians over runs are printed and
written to benchmarks/results/ranking-<timestamp>.json, and RESULTS.md's ranking section is
rebuilt from the newest result of each example (benchlib.ranking_report).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO / "bentos"), str(REPO)]  # REPO: tests.redis_server

from benchlib.configs import BY_KEY  # noqa: E402
from benchlib.fixture import register_features, start_redis  # noqa: E402
from benchlib.procs import LOAD_CPU, free_port  # noqa: E402
from benchlib.ranking_example import EXAMPLES, example_candidates, example_fixture  # noqa: E402
from benchlib.ranking_report import write_ranking_md  # noqa: E402

RESULTS = HERE / "results"


def log(message: str) -> None:
    print(message, flush=True)


def call(conn: http.client.HTTPConnection, path: str, body: bytes) -> dict[str, Any]:
    conn.request("POST", path, body, {"content-type": "application/json"})
    response = conn.getresponse()
    raw = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path} answered {response.status}: {raw[:300]!r}")
    return json.loads(raw)  # type: ignore[no-any-return]


def wait_ready(port: int, alive: Any, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the runtime exited before it was ready")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the runtime was not ready within {timeout_s} s")


def one_run(port: int, entity: str, rows: list[dict[str, Any]], repeats: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    ranking = json.dumps({"entity_id": entity, "instances": rows}).encode()
    singles = [json.dumps({"entity_id": entity, "features": r["features"]}).encode() for r in rows]
    batch_s = []
    for _ in range(repeats):
        start = time.perf_counter()
        answer = call(conn, "/predict_batch", ranking)
        batch_s.append(time.perf_counter() - start)
        assert answer["scored"] == len(rows), answer
    start = time.perf_counter()
    for body in singles:
        call(conn, "/predict", body)
    single_s = time.perf_counter() - start
    conn.close()
    batch = statistics.median(batch_s)
    return {
        "batch_call_ms": batch * 1000,
        "batch_rows_per_s": len(rows) / batch,
        "single_calls_ms": single_s * 1000,
        "single_rows_per_s": len(rows) / single_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--example", choices=EXAMPLES, default="ranking", help="the example served (see above)"
    )
    p.add_argument("--runs", type=int, default=3, help="runs; medians are reported")
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5, help="ranking calls per run (median)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured passes before the runs")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="rtml-rank-bench-") as tmp:
        root = Path(tmp)
        fixture = example_fixture(args.example, root, log)
        redis, url = start_redis(root, log)
        server = None
        try:
            register_features(fixture, url, log)
            port = free_port()
            server = BY_KEY["rtml-redis"].server(fixture, port, root, Path(sys.executable))
            server.env = {**server.env, "RTML_MAX_BATCH_ROWS": str(args.candidates)}
            server.start()
            wait_ready(port, server.alive)
            os.sched_setaffinity(0, {LOAD_CPU})
            entity = fixture.entity_ids[0]
            rows = example_candidates(args.example, fixture, args.candidates)
            for _ in range(args.warmup):
                one_run(port, entity, rows, 1)
            runs = []
            for i in range(args.runs):
                runs.append(one_run(port, entity, rows, args.repeats))
                log(f"run {i + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in runs[-1].items()))
        finally:
            if server is not None:
                server.stop()
            redis.stop()
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    median["speedup"] = median["batch_rows_per_s"] / median["single_rows_per_s"]
    log(
        f"{args.example}: median of {args.runs} runs, {args.candidates} candidates: one call "
        f"{median['batch_call_ms']:.1f} ms ({median['batch_rows_per_s']:.0f} rows/s); "
        f"{args.candidates} single calls {median['single_calls_ms']:.1f} ms "
        f"({median['single_rows_per_s']:.0f} rows/s); {median['speedup']:.1f}x"
    )
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"ranking-{stamp}.json"
    report = {
        "command": " ".join(
            ["python benchmarks/ranking.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "args": vars(args),
        "runs": runs,
        "median": median,
        "cpu_count": os.cpu_count(),
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out.relative_to(REPO)}")
    section = write_ranking_md(RESULTS, HERE / "RESULTS.md")
    log(f"wrote the ranking section of {section.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
