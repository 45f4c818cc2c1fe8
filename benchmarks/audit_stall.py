"""Does a stalled audit stream raise /predict's p99? (docs/decisions.md, "Audit")

    python benchmarks/audit_stall.py --url http://127.0.0.1:3000 --audit-redis-pid PID \
        --body examples/fraud/request.json

Start first: the feature Redis, a second redis-server for the audit stream (its PID is what
gets SIGSTOPped), and `rtml serve` of a Model with spec.audit (examples/fraud/detector.yaml)
with RTML_AUDIT_REDIS_URL pointing at the second one. `measure_stall` sends the same request
c=1 in alternating blocks with the audit Redis running and stopped (`rounds` of each, the order
turned every round, a block at least 1.5 s so a stopped one outlasts the writer's 1 s timeout),
then once more running; it reports p50/p99 and the audit records lost per state (the blocks of
a state pooled) and the median over rounds of the stopped block's p99 minus the running one's.
Alternating, because on this host one phase after another measured the host's minute: a run
had running 5.685, stopped 6.248, running again 7.453 ms (docs/benchmark-noise.md). The
benchmark suite calls `measure_stall` the same way.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import time
import urllib.parse
from pathlib import Path
from typing import Any

MIN_BLOCK_S = 1.5  # longer than the audit writer's 1 s timeout (rtml_runtime.audit.TIMEOUT_S)


def _connection(base_url: str) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(base_url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=10)


def _post_ms(conn: http.client.HTTPConnection, body: bytes) -> float:
    start = time.perf_counter()
    conn.request("POST", "/predict", body, {"content-type": "application/json"})
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        raise RuntimeError(f"/predict answered {r.status}")
    return (time.perf_counter() - start) * 1000


def _lost(conn: http.client.HTTPConnection) -> float:
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("rtml_audit_records_total{")
        and ('outcome="dropped"' in line or 'outcome="failed"' in line)
    )


def _block(
    conn: http.client.HTTPConnection, body: bytes, n: int, min_s: float
) -> tuple[list[float], float]:
    """At least `n` requests and `min_s` seconds: their latencies and the audit records lost."""
    lost = _lost(conn)
    samples: list[float] = []
    start = time.monotonic()
    while len(samples) < n or time.monotonic() - start < min_s:
        samples.append(_post_ms(conn, body))
    return samples, _lost(conn) - lost


def _stats(samples: list[float], lost: float) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 3),
        "requests": len(ordered),
        "audit_lost": lost,
    }


def measure_stall(
    base_url: str, audit_redis_pid: int, body: dict[str, Any], n: int = 2000, rounds: int = 4
) -> dict[str, Any]:
    """c=1 p50/p99 of /predict with the audit Redis running and stopped (SIGSTOP), `n`
    requests of each over `rounds` alternating blocks, then running again."""
    raw = json.dumps(body).encode()
    conn = _connection(base_url)
    for _ in range(200):  # warm
        _post_ms(conn, raw)
    per_block = max(1, n // rounds)
    pooled: dict[str, tuple[list[float], float]] = {"running": ([], 0.0), "stopped": ([], 0.0)}
    extra: list[float] = []
    for r in range(rounds):
        p99: dict[str, float] = {}
        for state in ("running", "stopped") if r % 2 == 0 else ("stopped", "running"):
            if state == "stopped":
                os.kill(audit_redis_pid, signal.SIGSTOP)
            try:
                samples, lost = _block(conn, raw, per_block, MIN_BLOCK_S)
            finally:
                if state == "stopped":
                    os.kill(audit_redis_pid, signal.SIGCONT)
                    time.sleep(2)  # the writer's socket timeout, then it drains
            p99[state] = _stats(samples, lost)["p99_ms"]
            kept, lost_before = pooled[state]
            pooled[state] = (kept + samples, lost_before + lost)
        extra.append(p99["stopped"] - p99["running"])
    out: dict[str, Any] = {state: _stats(*v) for state, v in pooled.items()}
    out["resumed"] = _stats(*_block(conn, raw, per_block, MIN_BLOCK_S))
    conn.close()
    q = statistics.quantiles(extra, n=4) if len(extra) > 1 else [extra[0]] * 3
    out["p99_extra_by_round"] = {
        "median": round(statistics.median(extra), 3),
        "q1": round(q[0], 3),
        "q3": round(q[2], 3),
        "n": len(extra),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--audit-redis-pid", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("-n", type=int, default=2000, help="requests per state, over the rounds")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    body = json.loads(args.body.read_text())
    stall = measure_stall(args.url, args.audit_redis_pid, body, args.n, args.rounds)
    print(json.dumps(stall, indent=2))


if __name__ == "__main__":
    main()
