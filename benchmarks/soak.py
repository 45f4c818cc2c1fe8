"""An open-loop HTTP load generator for the soak: requests at a fixed rate, whatever the server.

    python benchmarks/soak.py --url http://127.0.0.1:3000/predict --rate 2000 --duration 300 \
        --body-prefix '{"entity_id":"' --body-suffix '",...}' --ids ids.txt

Like wrk2: N keep-alive connections, each sending on its own fixed schedule (rate/N per
second). A request whose connection was still busy at its due time (the server fell behind)
has its latency counted from when it was due, not from when it could be sent, so stalls are not
hidden (no coordinated omission); otherwise from when it was sent, so the generator's own timer
slack (~1 ms with asyncio) is not charged to the server. Runs on one thread (run.py pins it to
the load CPU). Prints JSON: per-minute p50/p99/max, counts, errors, and how late it sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

CONNECTIONS = 32


class Client(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.buffer = b""
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end]
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if len(self.buffer) < end + 4 + length:
            return
        self.buffer = self.buffer[end + 4 + length :]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))

    async def request(self, raw: bytes) -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


class Generator:
    def __init__(self, url: str, prefix: str, suffix: str, ids: list[str]) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.head = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self.prefix, self.suffix, self.ids = prefix.encode(), suffix.encode(), ids
        self.due: list[float] = []
        self.latency: list[float] = []
        self.late: list[float] = []  # send - due, for requests whose connection was free
        self.errors: list[float] = []

    def raw(self) -> bytes:
        body = self.prefix + random.choice(self.ids).encode() + self.suffix  # noqa: S311
        return self.head + str(len(body)).encode() + b"\r\n\r\n" + body

    async def connection(self, index: int, n: int, rate: float, duration: float) -> None:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(Client, self.host, self.port)
        interval = n / rate
        t0 = self.t0
        due = t0 + index / rate
        free_at = 0.0
        while due < t0 + duration:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.perf_counter()
            try:
                status = await client.request(self.raw())
            except ConnectionError:
                self.errors.append(due - t0)
                _, client = await loop.create_connection(Client, self.host, self.port)
                due += interval
                continue
            done = time.perf_counter()
            behind = free_at > due  # the previous answer came after this one was due
            self.due.append(due - t0)
            self.latency.append(done - (due if behind else sent))
            if not behind:
                self.late.append(sent - due)
            if not 200 <= status < 300:
                self.errors.append(due - t0)
            free_at = done
            due += interval
        client.transport.close()

    async def run(self, rate: float, duration: float, connections: int) -> None:
        self.t0 = time.perf_counter() + 0.2
        await asyncio.gather(
            *(self.connection(i, connections, rate, duration) for i in range(connections))
        )


def _pct(values: np.ndarray, q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if len(values) else float("nan")


def summarise(gen: Generator, rate: float, duration: float, connections: int) -> dict[str, Any]:
    due = np.asarray(gen.due)
    lat = np.asarray(gen.latency) * 1000
    errors = np.asarray(gen.errors)
    minutes = []
    for m in range(int(np.ceil(duration / 60))):
        sel = (due >= m * 60) & (due < (m + 1) * 60)
        if not sel.any():
            continue
        minutes.append(
            {
                "minute": m + 1,
                "requests": int(sel.sum()),
                "errors": int(((errors >= m * 60) & (errors < (m + 1) * 60)).sum()),
                "p50_ms": _pct(lat[sel], 50),
                "p99_ms": _pct(lat[sel], 99),
                "max_ms": round(float(lat[sel].max()), 3),
            }
        )
    late = np.asarray(gen.late) * 1000
    return {
        "rate": rate,
        "duration_s": duration,
        "connections": connections,
        "requests": len(gen.latency),
        "errors": len(gen.errors),
        "achieved_rps": round(len(gen.latency) / duration, 1),
        "p50_ms": _pct(lat, 50),
        "p99_ms": _pct(lat, 99),
        "sent_late_p50_ms": _pct(late, 50),
        "sent_late_p99_ms": _pct(late, 99),
        "minutes": minutes,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, default=300.0, help="seconds")
    p.add_argument("--connections", type=int, default=CONNECTIONS)
    p.add_argument("--body-prefix", required=True)
    p.add_argument("--body-suffix", required=True)
    p.add_argument("--ids", type=Path, required=True, help="entity ids, one a line")
    args = p.parse_args()
    gen = Generator(args.url, args.body_prefix, args.body_suffix, args.ids.read_text().split())
    run: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        run = uvloop.run
    run(gen.run(args.rate, args.duration, args.connections))
    print(json.dumps(summarise(gen, args.rate, args.duration, args.connections)))


if __name__ == "__main__":
    main()
