"""One server, one run: start it, time it to its first answer, weigh it idle, load it with wrk."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchlib.configs import ServerConfig
from benchlib.fixture import Fixture, post
from benchlib.procs import (
    LOAD_CPU,
    SERVER_CPU,
    Server,
    cpu_times,
    free_port,
    harness_cpu_seconds,
    load_average,
    tree_cpu_seconds,
    tree_rss,
)
from benchlib.wrk import LoadError, WrkResult, run_wrk, write_entity_script, write_fixed_script

CONCURRENCY = (1, 16, 64)
SATURATION = (16, 64)
READY_TIMEOUT_S = 240.0
WARMUP_S = 2.0
# A run is disturbed when something other than the server used more than this share of the
# server's CPU, or the hypervisor stole it: the machine is shared.
DISTURBED_SHARE = 0.10
ATTEMPTS = 2
QUIET_SHARE = 0.15
QUIET_WAIT_S = 30.0
# Cards whose scores every server reports before it is loaded: the harness compares the floor's
# with rtml's on the same requests (summary.score_check).
SAMPLE_CARDS = 20


class ServerError(RuntimeError):
    """The server never answered, or answered wrongly."""


def wrk_script(config: ServerConfig, fixture: Fixture, work_dir: Path) -> Path:
    path = work_dir / f"{config.key}.lua"
    if config.features:
        prefix, suffix = fixture.entity_body_parts
        return write_entity_script(path, config.url_path, prefix, suffix, fixture.ids_file)
    return write_fixed_script(path, config.url_path, fixture.plain_body)


def first_body(config: ServerConfig, fixture: Fixture) -> str:
    return fixture.body_for(fixture.entity_ids[0]) if config.features else fixture.plain_body


def sample_scores(config: ServerConfig, fixture: Fixture, base_url: str) -> list[float | None]:
    """The scores the server answers for the first SAMPLE_CARDS cards (one fixed body without
    features); None where it did not answer 200 with a score."""
    bodies = (
        [fixture.body_for(e) for e in fixture.entity_ids[:SAMPLE_CARDS]]
        if config.features
        else [fixture.plain_body]
    )
    out: list[float | None] = []
    for body in bodies:
        status, answer = post(base_url + config.url_path, body, timeout=5)
        ok = status == 200 and isinstance(answer, dict) and "score" in answer
        out.append(float(answer["score"]) if ok else None)
    return out


def wait_for_quiet(log: Callable[[str], None]) -> float:
    """Wait (up to QUIET_WAIT_S) until other processes leave both CPUs mostly idle; seconds."""
    started = time.monotonic()
    while True:
        before = (cpu_times(SERVER_CPU), cpu_times(LOAD_CPU))
        time.sleep(2)
        after = (cpu_times(SERVER_CPU), cpu_times(LOAD_CPU))
        busy = [
            (a.busy - b.busy) / max(1e-9, a.total - b.total)
            for b, a in zip(before, after, strict=True)
        ]
        waited = time.monotonic() - started
        if max(busy) <= QUIET_SHARE or waited > QUIET_WAIT_S:
            if waited > 5:
                log(f"    waited {waited:.0f}s for other processes to quiet down")
            return round(waited, 1)
        time.sleep(3)


def wait_ready(server: Server, url: str, body: str) -> tuple[float, Any]:
    """Seconds from process start to the first successful prediction, and that answer."""
    while True:
        if not server.alive():
            raise ServerError(f"{server.name} exited before answering:\n{server.log_tail()}")
        try:
            status, answer = post(url, body, timeout=5)
            if status == 200 and isinstance(answer, dict) and "score" in answer:
                return time.monotonic() - server.started_at, answer
            if status not in (503, 404):
                raise ServerError(f"{server.name} answered {status}: {answer}")
        except OSError:
            pass
        if time.monotonic() - server.started_at > READY_TIMEOUT_S:
            raise ServerError(f"{server.name} was not ready in {READY_TIMEOUT_S:.0f}s")
        time.sleep(0.02)


def rtml_counters(base_url: str) -> dict[str, float]:
    """Totals of the runtime's outcome and cache counters from its /metrics."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    totals: dict[str, float] = {}
    for m in re.finditer(r"^(rtml_\w+_total)\{([^}]*)\}\s+([\d.eE+-]+)$", text, re.M):
        name, labels, value = m[1], m[2], float(m[3])
        outcome = re.search(r'outcome="(\w+)"', labels)
        key = f"{name}:{outcome[1]}" if outcome else name
        totals[key] = totals.get(key, 0.0) + value
        # Per variant too (champion, candidate, shadow), as NAME[VARIANT](:OUTCOME); these keys
        # never start with "NAME:", so the totals by outcome above are unchanged.
        variant = re.search(r'variant="(\w+)"', labels)
        if variant:
            vkey = f"{name}[{variant[1]}]" + (f":{outcome[1]}" if outcome else "")
            totals[vkey] = totals.get(vkey, 0.0) + value
    return totals


def _gauges(base_url: str, name: str) -> list[tuple[str, float]]:
    """The label sets and values of gauge NAME in the runtime's /metrics."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    return [
        (m[1], float(m[2]))
        for m in re.finditer(rf"^{name}\{{([^}}]*)\}}\s+([\d.eE+-]+)$", text, re.M)
    ]


def wait_for_plan(config: ServerConfig, base_url: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """Wait until the runtime applies CONFIG's traffic plan (`rtml_candidate_weight` says its
    percent, no candidate load error); what the gauges said. A pod started during an
    experiment loads the candidate before it is ready, so this should hold at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        weights = _gauges(base_url, "rtml_candidate_weight")
        errors = [(labels, v) for labels, v in _gauges(base_url, "rtml_candidate_load_error") if v]
        if errors:
            raise ServerError(f"{config.key}: the candidate did not load: {errors}")
        if any(v == config.percent for _, v in weights):
            return {"rtml_candidate_weight": weights}
        if time.monotonic() > deadline:
            raise ServerError(
                f"{config.key}: rtml_candidate_weight is {weights}, not {config.percent}, "
                f"{timeout_s:.0f}s after ready"
            )
        time.sleep(0.2)


def _cpu_snapshot(server_pid: int, redis_pid: int | None) -> dict[str, float]:
    cpu0, cpu1 = cpu_times(SERVER_CPU), cpu_times(LOAD_CPU)
    return {
        "cpu0_busy": cpu0.busy,
        "cpu0_total": cpu0.total,
        "cpu0_steal": cpu0.steal,
        "cpu1_busy": cpu1.busy,
        "cpu1_steal": cpu1.steal,
        "server": tree_cpu_seconds(server_pid),
        "harness": harness_cpu_seconds(),
        "redis": tree_cpu_seconds(redis_pid) if redis_pid else 0.0,
    }


def timed_wrk(
    server: Server,
    base_url: str,
    script: Path,
    concurrency: int,
    duration_s: float,
    redis_pid: int | None,
) -> tuple[dict[str, Any], float]:
    """One wrk run with who else used the CPUs meanwhile: its record, and the disturbance
    (the largest of other processes' share of either CPU and the hypervisor's steal)."""
    before = _cpu_snapshot(server.pid, redis_pid)
    result: WrkResult = run_wrk(base_url, script, concurrency, duration_s)
    after = _cpu_snapshot(server.pid, redis_pid)
    d = {k: after[k] - before[k] for k in before}
    wall = d["cpu0_total"] or duration_s
    foreign0 = max(0.0, d["cpu0_busy"] - d["server"]) / wall
    foreign1 = max(0.0, d["cpu1_busy"] - d["harness"] - d["redis"]) / wall
    steal = max(d["cpu0_steal"], d["cpu1_steal"]) / wall
    record = {
        **asdict(result),
        "server_cpu_share": round(d["server"] / wall, 3),
        "load_cpu_share": round((d["harness"] + d["redis"]) / wall, 3),
        "foreign_cpu_share": round(foreign0, 3),
        "foreign_load_cpu_share": round(foreign1, 3),
        "steal_share": round(steal, 3),
    }
    return record, max(foreign0, foreign1, steal)


def loaded_run(
    server: Server,
    base_url: str,
    script: Path,
    concurrency: int,
    duration_s: float,
    redis_pid: int | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """wrk at CONCURRENCY, repeated (up to ATTEMPTS) while other processes disturb either CPU."""
    least_disturbed: dict[str, Any] = {}
    for attempt in range(1, ATTEMPTS + 1):
        record, disturbance = timed_wrk(
            server, base_url, script, concurrency, duration_s, redis_pid
        )
        record["attempt"] = attempt
        if disturbance <= DISTURBED_SHARE:
            return record
        log(
            f"    c={concurrency}: disturbed (other processes: "
            f"{record['foreign_cpu_share']:.0%} of CPU {SERVER_CPU}, "
            f"{record['foreign_load_cpu_share']:.0%} of CPU {LOAD_CPU}; "
            f"steal {record['steal_share']:.0%}); "
            f"{'retrying' if attempt < ATTEMPTS else 'keeping the least disturbed, flagged'}"
        )
        if not least_disturbed or disturbance < least_disturbed["disturbance"]:
            least_disturbed = record | {"disturbance": round(disturbance, 3)}
        if attempt < ATTEMPTS:
            time.sleep(5 * attempt)
    return least_disturbed | {"disturbed": True, "attempt": ATTEMPTS}


@dataclass
class Measured:
    """One server being measured: what measure() fills in as it goes."""

    config: ServerConfig
    server: Server
    base_url: str
    script: Path
    out: dict[str, Any]
    before: dict[str, float] = field(default_factory=dict)


def prepare(
    config: ServerConfig,
    fixture: Fixture,
    work_dir: Path,
    kserve_python: Path,
    log: Callable[[str], None],
    quiet: bool = True,
) -> Measured:
    """A server made, not started; with `quiet`, once other processes have quieted down."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    script = wrk_script(config, fixture, work_dir)
    server = config.server(fixture, port, work_dir, kserve_python)
    out: dict[str, Any] = {"waited_for_quiet_s": wait_for_quiet(log) if quiet else 0.0}
    out["load_before"] = load_average()
    return Measured(config, server, base_url, script, out)


def start(m: Measured, fixture: Fixture) -> None:
    """Start it, time it to its first answer, check its answers and plan, warm it up, weigh it
    idle and read its counters; raises ServerError or LoadError."""
    config, server, base_url, out = m.config, m.server, m.base_url, m.out
    server.start()
    ready_s, answer = wait_ready(server, base_url + config.url_path, first_body(config, fixture))
    out["ready_s"] = round(ready_s, 3)
    if server.marker_at is not None:
        out["ready_after_handover_s"] = round(ready_s - server.marker_at, 3)
    if config.is_rtml and config.features and answer.get("degraded"):
        raise ServerError(f"{config.key} answered from defaults (degraded): {answer}")
    out["sample_scores"] = sample_scores(config, fixture, base_url)
    if config.traffic is not None:
        out["plan"] = wait_for_plan(config, base_url)
    run_wrk(base_url, m.script, 4, WARMUP_S)
    time.sleep(2)
    rss_kib, procs = tree_rss(server.pid)
    out["idle_rss_mib"] = round(rss_kib / 1024, 1)
    out["processes"] = procs
    m.before = rtml_counters(base_url) if config.is_rtml else {}


def finish(m: Measured) -> None:
    """After the load: the counters' differences (rtml), saturation, memory after load."""
    config, out = m.config, m.out
    if config.is_rtml:
        after = rtml_counters(m.base_url)
        out["counters"] = {k: v - m.before.get(k, 0.0) for k, v in after.items()}
        _check_outcomes(config, out["counters"])
    sat = [out[f"c{c}"]["rps"] for c in SATURATION if f"c{c}" in out]
    if sat:
        out["saturation_rps"] = max(sat)
    rss_after, _ = tree_rss(m.server.pid)
    out["rss_after_load_mib"] = round(rss_after / 1024, 1)


def failed(m: Measured, e: Exception, log: Callable[[str], None]) -> None:
    m.out["error"] = str(e)
    log(f"  !! {m.config.key} FAILED: {e}\n  log: {m.server.log_path}\n{m.server.log_tail(15)}")


def stop(m: Measured) -> None:
    m.server.stop()
    m.out["load_after"] = load_average()


def measure(
    config: ServerConfig,
    fixture: Fixture,
    duration_s: float,
    work_dir: Path,
    kserve_python: Path,
    log: Callable[[str], None],
    concurrencies: tuple[int, ...] = CONCURRENCY,
) -> dict[str, Any]:
    m = prepare(config, fixture, work_dir, kserve_python, log)
    try:
        start(m, fixture)
        for c in concurrencies:
            m.out[f"c{c}"] = loaded_run(
                m.server, m.base_url, m.script, c, duration_s, fixture.redis_pid, log
            )
            time.sleep(1)
        finish(m)
    except (ServerError, LoadError) as e:
        failed(m, e, log)
    finally:
        stop(m)
    return m.out


def _check_outcomes(config: ServerConfig, counters: dict[str, float]) -> None:
    """Fail when more than 1% of rtml's answers were not the model's own (fallbacks, errors)."""
    ok = counters.get("rtml_requests_total:ok", 0.0)
    bad = sum(
        v
        for k, v in counters.items()
        if k.startswith("rtml_requests_total:") and not k.endswith(":ok")
    )
    if ok + bad and bad / (ok + bad) > 0.01:
        raise ServerError(
            f"{config.key}: {bad:.0f} of {ok + bad:.0f} answers were not ok: {counters}"
        )
