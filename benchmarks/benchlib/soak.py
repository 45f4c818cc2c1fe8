"""The soak: rtml with a Redis read per request, open loop at 70% of its saturation, 5 minutes."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib.configs import BY_KEY
from benchlib.fixture import Fixture
from benchlib.measure import measure, rtml_counters, wait_ready, wrk_script
from benchlib.procs import LOAD_CPU, free_port, pinned, tree_rss
from benchlib.wrk import run_wrk

SOAK_SHARE = 0.7
RSS_EVERY_S = 10.0
GENERATOR = Path(__file__).resolve().parents[1] / "soak.py"


def run_soak(
    fixture: Fixture,
    summary: dict[str, dict[str, float]],
    log_dir: Path,
    seconds: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    config = BY_KEY["rtml-redis"]
    saturation = summary.get(config.key, {}).get("saturation_rps")
    if saturation is None:
        log("soak: measuring rtml-redis's saturation first")
        sat = measure(
            config, fixture, 10, log_dir, Path(sys.executable), log, concurrencies=(16, 64)
        )
        saturation = sat.get("saturation_rps")
        if saturation is None:
            return {"error": f"could not measure saturation: {sat.get('error')}"}
    rate = round(SOAK_SHARE * saturation)
    log(f"soak: {config.key} at {rate} req/s (70% of {saturation:.0f}), open loop, {seconds:.0f}s")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = config.server(fixture, port, log_dir, Path(sys.executable))
    server.name = "soak"
    server.log_path = log_dir / "soak-server.log"
    out: dict[str, Any] = {"rate": rate, "saturation_rps": saturation, "seconds": seconds}
    try:
        server.start()
        wait_ready(server, base_url + config.url_path, fixture.body_for(fixture.entity_ids[0]))
        run_wrk(base_url, wrk_script(config, fixture, log_dir), 4, 2.0)
        time.sleep(2)
        prefix, suffix = fixture.entity_body_parts
        argv = pinned(
            LOAD_CPU,
            [
                sys.executable,
                str(GENERATOR),
                "--url",
                base_url + config.url_path,
                "--rate",
                str(rate),
                "--duration",
                str(seconds),
                "--body-prefix",
                prefix,
                "--body-suffix",
                suffix,
                "--ids",
                str(fixture.ids_file),
            ],
        )
        rss: list[tuple[float, float]] = []
        started = time.monotonic()
        gen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while gen.poll() is None:
            rss.append((round(time.monotonic() - started, 1), tree_rss(server.pid)[0] / 1024))
            with contextlib.suppress(subprocess.TimeoutExpired):
                gen.wait(RSS_EVERY_S)
        rss.append((round(time.monotonic() - started, 1), tree_rss(server.pid)[0] / 1024))
        stdout, stderr = gen.communicate()
        if gen.returncode != 0:
            return out | {"error": f"the generator failed: {stderr[-2000:]}"}
        report = json.loads(stdout.strip().splitlines()[-1])
        minutes = report["minutes"]
        out |= {
            "generator": report,
            "first_minute": minutes[0],
            "last_minute": minutes[-1],
            "rss_samples_mib": rss,
            "rss_start_mib": round(rss[0][1], 1),
            "rss_end_mib": round(rss[-1][1], 1),
            "counters": rtml_counters(base_url),
        }
        log(
            f"soak: p99 first minute {minutes[0]['p99_ms']:.3f} ms, "
            f"last {minutes[-1]['p99_ms']:.3f} ms; "
            f"RSS {out['rss_start_mib']:.1f} → {out['rss_end_mib']:.1f} MiB; "
            f"{report['achieved_rps']:.0f} req/s achieved, {report['errors']} errors"
        )
    finally:
        server.stop()
    return out
