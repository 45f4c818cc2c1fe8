"""`rtml bench`: drive a running runtime, and say in the exit code whether the run measured it.

The load generator is the runtime's (rtml_runtime.bench: its numpy and rich come with the
runtime extra, and load only when a run needs them); this module is the command's contract with
scripts: what goes to stdout (the table, or one JSON document with `--json`), the one-sentence
errors on stderr, the exit codes.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import click

from rtml_runtime.bench import (
    BenchResult,
    UnreachableError,
    format_result,
    load_body,
    run_bench,
)

DEFAULT_URL = "http://127.0.0.1:3000/predict"
# Percentiles are taken over the successful answers only: with more than 1% of requests failing,
# the p99 leaves out more requests than the 1% tail it claims to describe.
DEFAULT_MAX_ERROR_RATE = 0.01
EXIT_TOO_MANY_ERRORS = 1
EXIT_UNREACHABLE = 3


class TooManyErrors(click.ClickException):
    """Every request failed, or more than --max-error-rate did: one sentence on stderr."""

    exit_code = EXIT_TOO_MANY_ERRORS


class Unreachable(click.ClickException):
    """Not even one connection opened: one sentence on stderr, and nothing on stdout."""

    exit_code = EXIT_UNREACHABLE


def _check_url(ctx: click.Context, param: click.Parameter, url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise click.BadParameter(f"{url!r} is not an http:// URL (rtml bench speaks plain HTTP)")
    try:
        _ = parts.port
    except ValueError as e:
        raise click.BadParameter(f"{url!r} has an invalid port") from e
    return url


def _ms(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


def result_json(
    result: BenchResult, url: str, concurrency: int, max_error_rate: float
) -> dict[str, Any]:
    """The `--json` document; its keys are listed in the command's help."""
    return {
        "url": url,
        "concurrency": concurrency,
        "seconds": round(result.seconds, 3),
        "requests": len(result.latencies_s),
        "throughput_rps": round(result.throughput, 1),
        "p50_ms": _ms(result.percentile_ms(50)),
        "p99_ms": _ms(result.percentile_ms(99)),
        "p999_ms": _ms(result.percentile_ms(99.9)),
        "errors": result.failed,
        "error_rate": round(result.error_rate, 6),
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "failures": dict(sorted(result.failures.items())),
        "degraded": result.degraded,
        "max_error_rate": max_error_rate,
        "ok": _verdict(result, url, max_error_rate) is None,
    }


def _breakdown(result: BenchResult) -> str:
    parts = [f"HTTP {s}: {n:,}" for s, n in sorted(result.statuses.items()) if s != 200]
    parts += [f"{reason}: {n:,}" for reason, n in sorted(result.failures.items())]
    return ", ".join(parts)


def _verdict(result: BenchResult, url: str, max_error_rate: float) -> str | None:
    """Why the run does not count as a measurement, or None when it does."""
    if not result.latencies_s:
        if not result.attempts:
            return f"no request to {url} was sent"
        return f"every request to {url} failed ({_breakdown(result)}); nothing was measured"
    if result.error_rate > max_error_rate:
        return (
            f"{result.failed:,} of {result.attempts:,} requests to {url} failed "
            f"({result.error_rate:.2%}, over --max-error-rate {max_error_rate:.2%}): "
            f"{_breakdown(result)}"
        )
    return None


def _unreachable_message(url: str, reason: str, refused: bool) -> str:
    if refused:
        port = urllib.parse.urlsplit(url).port or 80
        return (
            f"nothing is listening at {url} (connection refused); start it with "
            f"`rtml serve MODEL.yaml --port {port}`, or pass the server's --url"
        )
    return f"{url} cannot be reached ({reason}); check --url and that the server is up"


@click.command()
@click.option(
    "--url",
    default=DEFAULT_URL,
    show_default=True,
    callback=_check_url,
    help="Endpoint to drive (plain http://).",
)
@click.option(
    "--body",
    "body_path",
    type=click.Path(exists=True, path_type=Path),
    required=True,
    help="JSON request body to send (e.g. examples/fraud/request.json).",
)
@click.option("--concurrency", "-c", default=1, show_default=True, type=click.IntRange(1, 1024))
@click.option(
    "--duration",
    "-d",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.5),
    help="Seconds of load.",
)
@click.option(
    "--max-error-rate",
    default=DEFAULT_MAX_ERROR_RATE,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Exit 1 when more than this share of the requests failed (0.01 = 1%).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the result as one JSON document on stdout (keys below) instead of the table.",
)
def bench(
    url: str,
    body_path: Path,
    concurrency: int,
    duration: float,
    max_error_rate: float,
    as_json: bool,
) -> None:
    """Drive a running runtime with a closed loop; print p50/p99/p99.9, throughput, errors.

    A request fails when its answer is not HTTP 200 or it gets no answer (connection refused
    or reset, closed by the server, none within 5 s after the run). Percentiles and throughput
    are of the HTTP 200 answers; "degraded" ones (feature fallbacks) count as successes.

    \b
    Exit codes (stdout holds only the result; the error sentences, and the
    progress bar when stderr is a terminal, go to stderr):
      0  the run measured the server: some request succeeded and at most
         --max-error-rate of them failed (default 1%: above it the p99 of the
         successes leaves out more requests than the tail it describes)
      1  every request failed, or more than --max-error-rate did; the result is
         still printed on stdout, and one sentence on stderr says how many failed
      2  bad options, or a --body that is not JSON (click's usage error)
      3  the server could not be reached at all (nothing listening, the host name
         does not resolve); stdout is empty

    \b
    --json prints one object with these keys:
      url, concurrency   as given
      seconds            the run's length, measured
      requests           successful (HTTP 200) answers
      throughput_rps     successful answers per second
      p50_ms, p99_ms, p999_ms
                         latency percentiles of the successes (null if none)
      errors             failed requests: non-200 answers plus no answer
      error_rate         errors / (requests + errors)
      statuses           answers by HTTP status, e.g. {"200": 9120, "503": 3}
      failures           requests with no answer, by reason, e.g.
                         {"connection reset": 2}
      degraded           successes served with fallback features
      max_error_rate     the threshold in force
      ok                 true exactly when the exit code is 0
    """
    try:
        body = load_body(body_path)
    except (ValueError, OSError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise click.BadParameter(f"{body_path} is not a JSON file: {e}", param_hint="--body") from e
    try:
        # The bar only where someone watches: piped, rich would leave a blank line on stderr.
        progress = sys.stderr.isatty()
        result = asyncio.run(run_bench(url, body, concurrency, duration, progress=progress))
    except UnreachableError as e:
        raise Unreachable(_unreachable_message(url, e.reason, e.refused)) from e
    if as_json:
        click.echo(
            json.dumps(result_json(result, url, concurrency, max_error_rate), allow_nan=False)
        )
    else:
        click.echo(format_result(result, concurrency))
    verdict = _verdict(result, url, max_error_rate)
    if verdict is not None:
        raise TooManyErrors(verdict)
