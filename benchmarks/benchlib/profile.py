"""Where rtml's time goes: py-spy samples of the server under wrk load, folded by package."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib.configs import BY_KEY
from benchlib.fixture import Fixture
from benchlib.measure import first_body, wait_ready, wrk_script
from benchlib.procs import LOAD_CPU, free_port, pinned
from benchlib.wrk import run_wrk

PROFILE_S = 10
CONCURRENCY = 16
TOP = 15
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


def py_spy() -> str:
    return str(Path(sys.executable).with_name("py-spy"))


def package_of(path: str) -> str:
    """A frame's top-level package (py-spy shows paths relative to sys.path), stdlib marked."""
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    path = re.sub(r"^.*/lib/python3\.\d+/", "", path)
    if path.startswith("<frozen "):
        top = path.removeprefix("<frozen ").removesuffix(">").split(".")[0]
    else:
        top = path.split("/", 1)[0].removesuffix(".py")
    return f"stdlib {top}" if top in sys.stdlib_module_names else top


def fold(raw: str) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks → self time by package and by function, and the
    inclusive share of the rtml runtime's own functions."""
    by_package: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [m for f in stack.split(";") if (m := _FRAME.match(f.strip()))]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        by_package[package_of(leaf["file"])] += count
        by_function[f"{leaf['func']} ({Path(leaf['file']).name})"] += count
        seen = {
            f"{m['func']} ({Path(m['file']).name})"
            for m in frames
            if package_of(m["file"]) == "rtml_runtime"
        }
        for name in seen:
            inclusive[name] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return (
            [(k, round(100 * v / total, 1)) for k, v in counter.most_common(TOP)] if total else []
        )

    return {
        "samples": total,
        "self_by_package_pct": shares(by_package),
        "self_by_function_pct": shares(by_function),
        "rtml_inclusive_pct": shares(inclusive),
    }


# Profiled beside rtml when they were measured in the run: the same app under uvicorn, and the
# floor it is compared with (issue 13).
BESIDE = {"rtml-redis": ("rtml-redis-uvicorn", "floor-redis"), "rtml": ("rtml-uvicorn", "bare")}


def profile_rtml(
    fixture: Fixture,
    missed: list[dict[str, Any]],
    log_dir: Path,
    log: Callable[[str], None],
    measured: list[str] | None = None,
) -> dict[str, Any]:
    """Profile rtml with the Redis read (and without features when that target was missed),
    and beside each, those of BESIDE that the run MEASURED."""
    keys = ["rtml-redis"]
    if not missed or any("no features" in t["name"] for t in missed):
        keys.append("rtml")
    keys = [k for key in keys for k in (key, *BESIDE[key]) if k == key or k in (measured or [])]
    return {key: _profile(key, fixture, log_dir, log) for key in keys}


def _profile(
    key: str, fixture: Fixture, log_dir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    config = BY_KEY[key]
    log(f"profile: py-spy on {key} under wrk c={CONCURRENCY} for {PROFILE_S}s")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = config.server(fixture, port, log_dir, Path(sys.executable))
    server.log_path = log_dir / f"profile-{key}.log"
    raw_path = log_dir / f"profile-{key}.txt"
    try:
        server.start()
        wait_ready(server, base_url + config.url_path, first_body(config, fixture))
        script = wrk_script(config, fixture, log_dir)
        run_wrk(base_url, script, 4, 2.0)
        spy = subprocess.Popen(
            pinned(
                LOAD_CPU,
                [
                    py_spy(),
                    "record",
                    "--pid",
                    str(server.pid),
                    "--subprocesses",
                    "--nonblocking",
                    "--rate",
                    "200",
                    "--duration",
                    str(PROFILE_S),
                    "--format",
                    "raw",
                    "--output",
                    str(raw_path),
                ],
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)
        run_wrk(base_url, script, CONCURRENCY, PROFILE_S)
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0 or not raw_path.exists():
            return {"error": f"py-spy failed: {err[-1000:]}"}
        folded = fold(raw_path.read_text())
        log(
            "  self time by package: "
            + ", ".join(f"{k} {v}%" for k, v in folded["self_by_package_pct"][:8])
        )
        return folded | {"raw": str(raw_path.name)}
    finally:
        server.stop()
