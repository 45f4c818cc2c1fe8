"""wrk, pinned to the load CPU: closed loop, fixed duration, one thread, N connections."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchlib.procs import LOAD_CPU, pinned

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
ERROR_LIMIT = 0.01


class LoadError(RuntimeError):
    """wrk failed, or the server answered too many requests with an error."""


@dataclass(frozen=True)
class WrkResult:
    concurrency: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    @property
    def error_rate(self) -> float:
        return (self.non_2xx + self.socket_errors) / max(1, self.requests)


def write_fixed_script(path: Path, url_path: str, body: str) -> Path:
    """A wrk script POSTing the same JSON body every time."""
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {_lua_string(body)}\n"
        f"wrk.path = {_lua_string(url_path)}\n"
    )
    return path


def write_entity_script(
    path: Path, url_path: str, body_prefix: str, body_suffix: str, ids_file: Path
) -> Path:
    """A wrk script POSTing PREFIX + a random entity id from IDS_FILE + SUFFIX per request."""
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        "local ids = {}\n"
        f"for line in io.lines({_lua_string(str(ids_file))}) do ids[#ids + 1] = line end\n"
        f"local prefix, suffix = {_lua_string(body_prefix)}, {_lua_string(body_suffix)}\n"
        f"local path = {_lua_string(url_path)}\n"
        "math.randomseed(os.time())\n"
        "request = function()\n"
        "  return wrk.format(nil, path, nil, prefix .. ids[math.random(#ids)] .. suffix)\n"
        "end\n"
    )
    return path


def _lua_string(text: str) -> str:
    """A Lua long-bracket string literal that cannot be closed by TEXT."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def run_wrk(base_url: str, script: Path, concurrency: int, duration_s: float) -> WrkResult:
    """One closed-loop run; raises LoadError when over 1% of the requests failed."""
    argv = pinned(
        LOAD_CPU,
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{duration_s:g}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(script),
            base_url,
        ],
    )
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    if out.returncode != 0:
        raise LoadError(f"wrk exited with {out.returncode}: {out.stderr.strip() or out.stdout}")
    result = parse_wrk(out.stdout, concurrency, duration_s)
    if result.requests == 0 or result.error_rate > ERROR_LIMIT:
        raise LoadError(
            f"{result.non_2xx} non-2xx and {result.socket_errors} socket errors in "
            f"{result.requests} requests at c={concurrency} (limit {ERROR_LIMIT:.0%}):\n"
            + out.stdout
        )
    return result


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(text: str, concurrency: int, duration_s: float) -> WrkResult:
    """The numbers of `wrk --latency` output: latency percentiles, requests, errors."""
    pct = {
        int(m[1]): _ms(m[2], m[3])
        for m in re.finditer(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    }
    requests = re.search(r"^\s+(\d+) requests in", text, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if requests is None or rps is None or len(pct) < 4:
        raise LoadError(f"cannot read wrk's output:\n{text}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return WrkResult(
        concurrency=concurrency,
        duration_s=duration_s,
        requests=int(requests[1]),
        rps=float(rps[1]),
        p50_ms=pct[50],
        p75_ms=pct[75],
        p90_ms=pct[90],
        p99_ms=pct[99],
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(x) for x in sock.groups()) if sock else 0,
    )
