"""`rtml bench`: a closed-loop load generator for a running runtime, with a progress bar.

Keep-alive HTTP/1.1 over raw asyncio streams: an HTTP client library would cost more per
request than the server under test, and a closed loop (each worker sends its next request only
after the answer) measures latency without coordinated omission hiding queueing.

A request that gets no HTTP answer (connection refused or reset, closed by the server, no answer
in time) is counted in `BenchResult.failures` by reason and its worker reconnects; when not even
the first connection opens, `run_bench` raises `UnreachableError` (nothing to measure). The
command line (`rtml.bench_cli`) turns both into exit codes.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

CONNECT_TIMEOUT_S = 5.0
# A request still unanswered this long after the run's end counts as failed ("no answer in time"),
# so a server that accepts connections but never answers cannot hold the bench forever.
GRACE_S = 5.0
RETRY_S = 0.05  # a worker whose connection failed waits this long before connecting again

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class UnreachableError(Exception):
    """Not even the first connection to the server opened: there is nothing to measure."""

    def __init__(self, url: str, error: OSError) -> None:
        self.url = url
        self.reason = failure_reason(error)
        self.refused = isinstance(error, ConnectionRefusedError)
        super().__init__(f"{url}: {self.reason}")


class ServerClosedError(EOFError):
    """The server closed the connection before its answer's status line."""


# The first match wins: TimeoutError and the connection errors are OSErrors; ServerClosedError and
# asyncio.IncompleteReadError are EOFErrors.
_REASONS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...] = (
    (ConnectionRefusedError, "connection refused"),
    (socket.gaierror, "the host name does not resolve"),
    ((ConnectionResetError, BrokenPipeError), "connection reset"),
    (EOFError, "the server closed the connection"),
    (TimeoutError, "no answer in time"),
    (ValueError, "the answer is not HTTP"),
)


def failure_reason(error: BaseException) -> str:
    """Why a request got no HTTP answer, in a few words (a key of BenchResult.failures)."""
    for kind, reason in _REASONS:
        if isinstance(error, kind):
            return reason
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return type(error).__name__


@dataclass
class BenchResult:
    latencies_s: list[float] = field(default_factory=list)  # of the HTTP 200 answers
    errors: int = 0  # answers other than HTTP 200
    degraded: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # requests with no HTTP answer
    seconds: float = 0.0

    def percentile_ms(self, q: float) -> float:
        # numpy loads here, not with the module: `rtml` imports this module for every command.
        import numpy as np

        return (
            float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else float("nan")
        )

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        """Requests that did not succeed: answers other than 200, and no answer at all."""
        return self.errors + sum(self.failures.values())

    @property
    def attempts(self) -> int:
        return len(self.latencies_s) + self.failed

    @property
    def error_rate(self) -> float:
        return self.failed / self.attempts if self.attempts else 0.0

    def fail(self, error: BaseException) -> None:
        reason = failure_reason(error)
        self.failures[reason] = self.failures.get(reason, 0) + 1


async def _exchange(conn: Connection, request: bytes) -> tuple[int, bytes, bool]:
    """One request on a kept-alive connection: its status, body, and whether to keep it."""
    reader, writer = conn
    writer.write(request)
    status_line = await reader.readline()
    if not status_line:
        raise ServerClosedError
    version, status, *_ = [*status_line.split(), b"", b""]
    if not version.startswith(b"HTTP/") or not status.isdigit():
        raise ValueError(status_line[:80])
    keep_alive = version != b"HTTP/1.0"
    length: int | None = None
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        head = line[:15].lower()
        if head == b"content-length:":
            length = int(line[15:])
        elif head.startswith(b"connection:"):
            keep_alive = b"close" not in line[11:].lower()
    if length is None and not keep_alive:
        body = await reader.read()  # the body ends with the connection
    else:
        body = await reader.readexactly(length or 0)
    return int(status), body, keep_alive


async def _connect(host: str, port: int) -> Connection:
    return await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)


async def _worker(
    host: str,
    port: int,
    request: bytes,
    stop_at: float,
    result: BenchResult,
    conn: Connection | None = None,
) -> None:
    # One deadline for the whole loop, not one per request (asyncio.wait_for would start a task
    # per request, and the client's overhead is in every latency it measures).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (stop_at - time.perf_counter()) + GRACE_S
    try:
        async with asyncio.timeout_at(deadline):
            while time.perf_counter() < stop_at:
                if conn is None:
                    try:
                        conn = await _connect(host, port)
                    except OSError as e:  # TimeoutError is one
                        result.fail(e)
                        await asyncio.sleep(RETRY_S)
                        continue
                start = time.perf_counter()
                try:
                    status, body, keep_alive = await _exchange(conn, request)
                except (OSError, EOFError, ValueError) as e:
                    result.fail(e)
                    conn[1].close()
                    conn = None
                    continue
                elapsed = time.perf_counter() - start
                if not keep_alive:
                    conn[1].close()
                    conn = None
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status != 200:
                    result.errors += 1
                    continue
                result.latencies_s.append(elapsed)
                if b'"degraded":true' in body:
                    result.degraded += 1
    except TimeoutError as e:  # the request in flight had no answer GRACE_S after the end
        result.fail(e)
    finally:
        if conn is not None:
            conn[1].close()


async def run_bench(
    url: str, body: bytes, concurrency: int, duration_s: float, progress: bool = True
) -> BenchResult:
    """Closed-loop load on `url` for `duration_s`; the progress bar goes to stderr.

    Raises UnreachableError when the first connection does not open.
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    try:
        first = await _connect(host, port)
    except OSError as e:
        raise UnreachableError(url, e) from e
    result = BenchResult()
    start = time.perf_counter()
    stop_at = start + duration_s
    tasks = [
        asyncio.create_task(
            _worker(host, port, request, stop_at, result, first if i == 0 else None)
        )
        for i in range(concurrency)
    ]
    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn("[bold]bench"),
            BarColumn(),
            TextColumn("{task.fields[rps]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),  # stdout is for the result (and `--json`) alone
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
    errors = f"{result.failed:,} {dict(sorted(result.statuses.items()))}"
    if result.failures:
        errors += ", no answer: " + ", ".join(f"{k} {v:,}" for k, v in result.failures.items())
    rows = [
        ("concurrency", f"{concurrency}"),
        ("requests", f"{len(result.latencies_s):,}"),
        ("throughput", f"{result.throughput:,.0f} req/s"),
        ("p50", f"{result.percentile_ms(50):.3f} ms"),
        ("p99", f"{result.percentile_ms(99):.3f} ms"),
        ("p99.9", f"{result.percentile_ms(99.9):.3f} ms"),
        ("errors", errors),
        ("fallbacks (degraded)", f"{result.degraded:,}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def load_body(path: Path) -> bytes:
    return json.dumps(json.loads(path.read_text()), separators=(",", ":")).encode()
