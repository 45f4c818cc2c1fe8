"""`rtml bench`: a closed-loop load generator for a running runtime, with a progress bar.

Keep-alive HTTP/1.1 over raw asyncio streams: an HTTP client library would cost more per
request than the server under test, and a closed loop (each worker sends its next request only
after the answer) measures latency without coordinated omission hiding queueing.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class BenchResult:
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    degraded: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

    def percentile_ms(self, q: float) -> float:
        return (
            float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else float("nan")
        )

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.seconds if self.seconds else 0.0


async def _worker(
    host: str, port: int, request: bytes, stop_at: float, result: BenchResult
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            elapsed = time.perf_counter() - start
            status = int(status_line.split()[1])
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status != 200:
                result.errors += 1
                continue
            result.latencies_s.append(elapsed)
            if b'"degraded":true' in body:
                result.degraded += 1
    finally:
        writer.close()


async def run_bench(
    url: str, body: bytes, concurrency: int, duration_s: float, progress: bool = True
) -> BenchResult:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    result = BenchResult()
    start = time.perf_counter()
    stop_at = start + duration_s
    tasks = [
        asyncio.create_task(_worker(host, port, request, stop_at, result))
        for _ in range(concurrency)
    ]
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn("[bold]bench"),
            BarColumn(),
            TextColumn("{task.fields[rps]}"),
            TimeRemainingColumn(),
            transient=True,
        ) as bar:
            job = bar.add_task("load", total=duration_s, rps="")
            while not all(t.done() for t in tasks):
                await asyncio.sleep(0.2)
                now = time.perf_counter() - start
                rps = len(result.latencies_s) / now if now else 0
                bar.update(job, completed=min(now, duration_s), rps=f"{rps:,.0f} req/s")
    await asyncio.gather(*tasks)
    result.seconds = time.perf_counter() - start
    return result


def format_result(result: BenchResult, concurrency: int) -> str:
    rows = [
        ("concurrency", f"{concurrency}"),
        ("requests", f"{len(result.latencies_s):,}"),
        ("throughput", f"{result.throughput:,.0f} req/s"),
        ("p50", f"{result.percentile_ms(50):.3f} ms"),
        ("p99", f"{result.percentile_ms(99):.3f} ms"),
        ("p99.9", f"{result.percentile_ms(99.9):.3f} ms"),
        ("errors", f"{result.errors:,} {dict(sorted(result.statuses.items()))}"),
        ("fallbacks (degraded)", f"{result.degraded:,}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def load_body(path: Path) -> bytes:
    return json.dumps(json.loads(path.read_text()), separators=(",", ":")).encode()
