"""Does a stalled audit stream raise /predict's p99? (docs/decisions.md, "Audit")

    python benchmarks/audit_stall.py --url http://127.0.0.1:3000 --audit-redis-pid PID \
        --body examples/fraud/request.json

Start first: the feature Redis, a second redis-server for the audit stream (its PID is what
gets SIGSTOPped), and `rtml serve` of a Model with spec.audit (examples/fraud/detector.yaml)
with RTML_AUDIT_REDIS_URL pointing at the second one. `measure_stall` sends the same request
c=1 with the audit Redis running, then stopped, then running again, and reports p50/p99 and
the audit records lost for each phase. The benchmark suite calls `measure_stall` the same way.
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


def _phase(conn: http.client.HTTPConnection, body: bytes, n: int) -> dict[str, float]:
    lost = _lost(conn)
    samples = sorted(_post_ms(conn, body) for _ in range(n))
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(samples[int(0.99 * (n - 1))], 3),
        "audit_lost": _lost(conn) - lost,
    }


def measure_stall(
    base_url: str, audit_redis_pid: int, body: dict[str, Any], n: int = 2000
) -> dict[str, dict[str, float]]:
    """c=1 p50/p99 of /predict: audit Redis running, stopped (SIGSTOP), running again."""
    raw = json.dumps(body).encode()
    conn = _connection(base_url)
    for _ in range(200):  # warm
        _post_ms(conn, raw)
    out = {"running": _phase(conn, raw, n)}
    os.kill(audit_redis_pid, signal.SIGSTOP)
    try:
        out["stopped"] = _phase(conn, raw, n)
    finally:
        os.kill(audit_redis_pid, signal.SIGCONT)
    time.sleep(2)  # the writer's socket timeout, then it drains
    out["resumed"] = _phase(conn, raw, n)
    conn.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--audit-redis-pid", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("-n", type=int, default=2000)
    args = parser.parse_args()
    body = json.loads(args.body.read_text())
    print(json.dumps(measure_stall(args.url, args.audit_redis_pid, body, args.n), indent=2))


if __name__ == "__main__":
    main()
