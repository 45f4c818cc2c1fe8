"""Progress lines while running, and benchmarks/RESULTS.md from a result JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib.configs import CONFIGS, EXPERIMENT_CONFIGS, ServerConfig
from benchlib.experiments import BASELINE, ratios_to_baseline
from benchlib.summary import ratios, rtml_peer

# `--suite experiments` writes only its own section of RESULTS.md (a level-2 heading, level-3
# headings inside); a main run regenerates the rest of the file and keeps that section.
EXPERIMENTS_HEADING = "## Experiments: traffic split and shadow"
SCALE_HEADING = "## Scale: Models reconciled from empty (API-only cluster)"
RANKING_HEADING = "## Ranking: one call for N candidates against N single calls"  # ranking.py
ASSESSMENT_HEADING = "## Fraud assessment"  # assessment.py
# `--suite floors` writes this section (benchlib/floor_report.py); the next one is written by
# hand from its numbers. Every other writer keeps both, near the top of the file.
FLOORS_HEADING = "## Floors for the feature path"
HOST_HEADING = "## The BentoML host: what it gives, what it costs"
TOP_SECTIONS = (FLOORS_HEADING, HOST_HEADING)
ISSUE_ORT_US = 8.5  # issue 3's floor: ONNX Runtime, one row, on the machine of its anchors
COLUMNS = [
    ("c1_p50_ms", "c=1 p50 ms", "{:.3f}"),
    ("c1_p99_ms", "c=1 p99 ms", "{:.3f}"),
    ("c16_p50_ms", "c=16 p50 ms", "{:.2f}"),
    ("c16_p99_ms", "c=16 p99 ms", "{:.2f}"),
    ("c16_rps", "c=16 req/s", "{:,.0f}"),
    ("saturation_rps", "max req/s (c=16, 64)", "{:,.0f}"),
    ("ready_s", "time to ready s", "{:.2f}"),
    ("idle_rss_mib", "idle RSS MiB", "{:.0f}"),
]


def format_row(config: ServerConfig, run: dict[str, Any]) -> str:
    """One progress line for a finished server run."""
    if "error" in run and "c1" not in run:
        return f"  {config.key:14} FAILED"
    parts = [f"  {config.key:14}"]
    for c in (1, 16, 64):
        r = run.get(f"c{c}")
        if r:
            flag = "*" if r.get("disturbed") else ""
            parts.append(
                f"c={c}: p50 {r['p50_ms']:.3f} p99 {r['p99_ms']:.3f} ms {r['rps']:,.0f}/s{flag}"
            )
    parts.append(f"ready {run.get('ready_s', float('nan')):.2f}s")
    parts.append(f"RSS {run.get('idle_rss_mib', float('nan')):.0f} MiB")
    parts.append(f"load {run['load_before'][0]:.2f}→{run['load_after'][0]:.2f}")
    return " | ".join(parts)


def _cell(row: dict[str, float], key: str, fmt: str) -> str:
    return fmt.format(row[key]) if key in row else "-"


def _table(
    result: dict[str, Any],
    features: bool | None,
    configs: list[ServerConfig] = CONFIGS,
    columns: list[tuple[str, str, str]] = COLUMNS,
) -> list[str]:
    """One row per server of CONFIGS in the result (only those with FEATURES unless None)."""
    summary = result["summary"]
    lines = [
        "| server | " + " | ".join(h for _, h, _ in columns) + " | disturbed steps |",
        "| --- |" + " ---: |" * (len(columns) + 1),
    ]
    for config in configs:
        if (features is not None and config.features != features) or config.key not in summary:
            continue
        label = f"**{config.label}**" if config.is_rtml else config.label
        runs = result["runs"][config.key]
        failed = any("error" in r for r in runs)
        steps = [r[f"c{c}"] for r in runs for c in (1, 16, 64) if f"c{c}" in r]
        flagged = f"{sum(1 for st in steps if st.get('disturbed'))}/{len(steps)}"
        row = summary[config.key]
        cells = [_cell(row, k, f) for k, _, f in columns]
        lines.append(
            f"| {label}{' (FAILED run)' if failed else ''} | "
            + " | ".join(cells)
            + f" | {flagged} |"
        )
    return lines


def _ratio_table(result: dict[str, Any]) -> list[str]:
    r = ratios(result["summary"])
    lines = [
        "| anchor ÷ its rtml peer | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "| --- |" + " ---: |" * len(COLUMNS),
    ]
    for config in CONFIGS:
        if config.key not in r:
            continue
        cells = [f"{r[config.key][k]:.2f}x" if k in r[config.key] else "-" for k, _, _ in COLUMNS]
        lines.append(f"| {config.label} ÷ {rtml_peer(config)} | " + " | ".join(cells) + " |")
    return lines


def _floors(floors: dict[str, Any]) -> list[str]:
    if "error" in floors:
        return [f"Floors failed: `{floors['error'][-300:]}`"]
    names = {
        "ort_session_run_one_row": "ONNX Runtime `session.run`, one row",
        "ort_feed_and_run_one_row": "… plus building the 30 input arrays",
        "redis_hget_round_trip": "Redis HGET round trip (redis-py, sync)",
        "redis_py_async_hmget": "HMGET of one Feast row (28 fields), redis-py async client",
        "rtml_resp_hmget": "the same HMGET, rtml_runtime.resp (hiredis parser)",
        "rtml_feast_redis_reader": "rtml's Redis reader (Feast codec + one pipelined HMGET)",
        "feast_sdk_get_online_features": "Feast SDK `get_online_features` (sync)",
        "feast_sdk_get_online_features_async": "Feast SDK `get_online_features_async`",
    }
    lines = ["| floor | median | p99 |", "| --- | ---: | ---: |"]
    for key, label in names.items():
        v = floors.get(key)
        if isinstance(v, dict):
            lines.append(f"| {label} | {v['median_us']:,.1f} µs | {v['p99_us']:,.1f} µs |")
    if "import_feast_s" in floors:
        lines.append(f"| `import feast` (fresh process) | {floors['import_feast_s']:.2f} s | |")
    return lines


def _where_time_goes(result: dict[str, Any]) -> list[str]:
    s: dict[str, dict[str, float]] = result["summary"]
    f: dict[str, Any] = result.get("floors", {})
    out: list[str] = []

    def p50(key: str) -> float | None:
        return s.get(key, {}).get("c1_p50_ms")

    def us(key: str) -> float | None:
        v = f.get(key)
        return float(v["median_us"]) if isinstance(v, dict) else None

    ort, bare, plain, redis_p50 = (
        us("ort_session_run_one_row"),
        p50("bare"),
        p50("rtml"),
        p50("rtml-redis"),
    )
    if ort:
        out.append(
            f"- Issue 3's anchor table was measured where `session.run` took {ISSUE_ORT_US} µs for "
            f"its model; here it takes {ort:.1f} µs ({ort / ISSUE_ORT_US:.0f}x): this machine and "
            "this build of the example model are slower at the model alone, so the absolute "
            "latency targets are harder here; the ratios within this run are the comparison."
        )
    if ort and bare:
        out.append(
            f"- The model is not the cost: `session.run` is {ort:.1f} µs of the bare ASGI app's "
            f"{bare * 1000:.0f} µs c=1 p50; the rest is wrk ↔ loopback TCP, HTTP parsing, JSON "
            "and the event loop."
        )
    if bare and plain:
        out.append(
            f"- rtml without features adds {1000 * (plain - bare):+.0f} µs at c=1 p50 over the "
            "bare app: its validation, metrics, breakers and BentoML's host process around "
            "the same ASGI core."
        )
    if plain and redis_p50:
        reader, hget = us("rtml_feast_redis_reader"), us("redis_hget_round_trip")
        extra = (
            f" (its reader alone: {reader:.0f} µs; a bare HGET: {hget:.0f} µs)"
            if reader and hget
            else ""
        )
        out.append(
            f"- The feature read costs rtml {1000 * (redis_p50 - plain):+.0f} µs at c=1 p50{extra}."
        )
    sdk, sdk_async = us("feast_sdk_get_online_features"), us("feast_sdk_get_online_features_async")
    if sdk and sdk_async:
        out.append(
            f"- The Feast SDK's read is {sdk:.0f} µs sync / {sdk_async:.0f} µs async per call, "
            "which bounds every anchor that reads through it."
        )
    if "import_feast_s" in f:
        out.append(
            f"- `import feast` alone takes {f['import_feast_s']:.1f} s: the floor of the time to "
            "ready of every server that uses the SDK."
        )
    handover = s.get("rtml-redis", {}).get("ready_after_handover_s")
    ready = s.get("rtml-redis", {}).get("ready_s")
    if handover is not None and ready is not None:
        out.append(
            f"- rtml with Redis: {ready:.2f} s from `rtml serve --no-register` to the first "
            f"prediction, of which {ready - handover:.2f} s is the CLI (reading the manifest) "
            f"before it execs the server, and {handover:.2f} s the server itself: BentoML's "
            "start-up, loading and warming the model, connecting to Redis."
        )
    for key, prof in (result.get("profiles") or {}).items():
        if "error" in prof:
            out.append(f"- py-spy on {key} failed: {prof['error']}")
            continue
        packages = dict(prof["self_by_package_pct"])
        named = ["onnxruntime", "rtml_runtime", "uvicorn", "redis", "stdlib asyncio", "stdlib json"]
        out.append(
            f"- Under load (`{key}`, c=16), the server's CPU goes to: "
            + ", ".join(f"{p} {packages.get(p, 0.0)}%" for p in named)
            + " (py-spy self time; tables below)."
        )
    for key, prof in (result.get("profiles") or {}).items():
        if "error" in prof:
            continue
        out += [
            "",
            f"py-spy on `{key}` under wrk c=16 ({prof['samples']:,} samples, all processes of the "
            "server; self time):",
            "",
            "| package | self % |",
            "| --- | ---: |",
            *[f"| {k} | {v} |" for k, v in prof["self_by_package_pct"][:10]],
            "",
            "| function (self) | % |",
            "| --- | ---: |",
            *[f"| `{k}` | {v} |" for k, v in prof["self_by_function_pct"][:12]],
            "",
            "| rtml function (inclusive) | % |",
            "| --- | ---: |",
            *[f"| `{k}` | {v} |" for k, v in prof["rtml_inclusive_pct"][:10]],
        ]
    return out


def _soak(soak: dict[str, Any] | None) -> list[str]:
    if not soak:
        return ["Not run (`--soak`)."]
    if "error" in soak:
        return [f"Failed: {soak['error']}"]
    gen = soak["generator"]
    return [
        f"rtml with a Redis read per request (cache off), open loop at {soak['rate']:,} req/s "
        f"(70% of its {soak['saturation_rps']:,.0f} req/s saturation) for {soak['seconds']:.0f} s: "
        f"{gen['requests']:,} requests, {gen['errors']} errors, {gen['achieved_rps']:,.0f} req/s "
        "achieved. Latency counted from when each request was due.",
        "",
        "| minute | requests | p50 ms | p99 ms | max ms |",
        "| ---: | ---: | ---: | ---: | ---: |",
        *[
            f"| {m['minute']} | {m['requests']:,} | {m['p50_ms']:.3f} | {m['p99_ms']:.3f} | "
            f"{m['max_ms']:.1f} |"
            for m in gen["minutes"]
        ],
        "",
        f"RSS of the server's process tree: {soak['rss_start_mib']:.1f} MiB at the start, "
        f"{soak['rss_end_mib']:.1f} MiB at the end; every 50 s: "
        + ", ".join(f"{mib:.1f}" for _, mib in soak["rss_samples_mib"][::5])
        + " MiB. The generator sent on time (p99 "
        f"{gen['sent_late_p99_ms']:.1f} ms late when its connection was free).",
    ]


def _disturbance(result: dict[str, Any]) -> list[str]:
    lines = [
        "| server | run | load avg before → after | other processes' share of CPU 0+1 (c=1/16/64) "
        "| retried |",
        "| --- | ---: | --- | --- | --- |",
    ]
    for key, runs in result["runs"].items():
        for r in runs:
            shares = "/".join(
                f"{r[f'c{c}']['foreign_cpu_share']:.0%}+{r[f'c{c}']['foreign_load_cpu_share']:.0%}"
                for c in (1, 16, 64)
                if f"c{c}" in r
            )
            retried = ", ".join(
                f"c={c}x{r[f'c{c}']['attempt']}"
                for c in (1, 16, 64)
                if f"c{c}" in r and r[f"c{c}"]["attempt"] > 1
            )
            lines.append(
                f"| {key} | {r['run']} | {r['load_before'][0]:.2f} → {r['load_after'][0]:.2f} | "
                f"{shares} | {retried or '-'} |"
            )
    return lines


def write_results_md(result: dict[str, Any], path: Path, json_path: Path) -> Path:
    m = result["machine"]
    args = result["args"]
    targets = result.get("targets", [])
    cached = result["summary"].get("rtml-cached")
    counters = [r.get("counters", {}) for r in result["runs"].get("rtml-cached", [])]
    hits = sum(c.get("rtml_feature_cache_hits_total", 0) for c in counters)
    misses = sum(c.get("rtml_feature_cache_misses_total", 0) for c in counters)
    merged = result.get("merged")
    merge_note = (
        [
            f"Servers {', '.join(merged['rerun'])} re-run by the command above and merged into "
            f"`{merged['base']}`, made by `{merged['base_command']}` (which took "
            f"{(merged['base_elapsed_s'] or 0) / 60:.0f} min).",
            "",
        ]
        if merged
        else []
    )
    text = [
        "# rtml benchmarks",
        "",
        f"Generated by `{result['command']}` ({args['runs']} run(s) of {args['duration']:g} s per "
        f"step, medians; the whole run took {result['elapsed_s'] / 60:.0f} min). Raw numbers: "
        f"`benchmarks/results/{json_path.name}`. How to run and what each server is: README.md.",
        "",
        *merge_note,
        "## Machine",
        "",
        f"- {m['nproc']} CPUs: {m['cpu_model']}; {m['memory_gib']} GiB; Linux {m['kernel']}",
        f"- Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        f"- {m['wrk']}; {m['redis_server']}",
        "- Each server pinned to CPU 0 (`taskset -c 0`, all its processes); wrk (`-t1`, closed "
        "loop, fixed duration), redis-server and the harness on CPU 1. Loopback HTTP/1.1 "
        "keep-alive.",
        "",
        "## Results (medians)",
        "",
        "Without features (the request carries all 30 model inputs):",
        "",
        *_table(result, features=False),
        "",
        "With a Redis feature read per request (entity id + 3 request features; every request "
        "reads a random one of the "
        f"{result.get('entities', 'materialised')} cards: anchors through the Feast SDK, rtml "
        "through its Redis reader with its L1 cache off, `RTML_CACHE_ENTRIES=0`):",
        "",
        *_table(result, features=True),
        "",
    ]
    if cached:
        ratio = f"{hits / (hits + misses):.0%}" if hits + misses else "unknown"
        text += [
            f"The *cached* row is rtml with its L1 cache at its defaults (100,000 entries, 1 s TTL)"
            f" on the same random keys: hit ratio {ratio} over the measured load.",
            "",
        ]
    text += [
        "### Ratios to rtml",
        "",
        "Each anchor's median divided by rtml's on the same work (without features ÷ `rtml`, "
        "with a Redis read ÷ `rtml-redis`). For latency, time to ready and RSS, above 1x means "
        "rtml is better; for req/s, below 1x means rtml is better.",
        "",
        *_ratio_table(result),
        "",
        "### Targets (issue 3; issue 13's floors)",
        "",
        "| target | measured | limit | met |",
        "| --- | ---: | ---: | :---: |",
        *[
            f"| {t['name']} | {t['measured']} | {t['limit']} | "
            f"{'yes' if t['met'] else 'no' if t['met'] is False else '-'} |"
            for t in targets
        ],
        "",
        "## Floors",
        "",
        "Measured in one process pinned to CPU 0, nothing around the call:",
        "",
        *_floors(result.get("floors", {})),
        "",
        "## Where the time goes",
        "",
        *_where_time_goes(result),
        "",
        "## Soak",
        "",
        *_soak(result.get("soak")),
        "",
        "## Noise",
        "",
        "The machine is shared. A step is retried once when other processes used "
        "more than 10% of CPU 0 (the server's) or CPU 1 (wrk's and redis's), or the hypervisor "
        "stole more than 10%, during it; if every attempt was disturbed the least disturbed is "
        "kept and counted in the tables' last column.",
        "",
        *_disturbance(result),
        "",
    ]
    old = path.read_text() if path.exists() else ""
    out = "\n".join(text)
    kept = (EXPERIMENTS_HEADING, RANKING_HEADING, ASSESSMENT_HEADING, SCALE_HEADING)
    for heading in kept:  # others' sections stay
        out = _with_section(out, _section(old, heading))
    for heading in TOP_SECTIONS:
        out = _with_section(out, _section(old, heading), before="## Machine")
    path.write_text(out)
    return path


def _section(text: str, heading: str) -> str:
    """The section of TEXT under HEADING, up to the next level-2 heading; "" when absent."""
    start = text.find(heading + "\n")
    if start < 0:
        return ""
    end = text.find("\n## ", start + len(heading))
    return text[start : end + 1 if end >= 0 else len(text)].rstrip("\n") + "\n"


def _with_section(text: str, section: str, before: str = "## Floors") -> str:
    """TEXT with SECTION in place of its old copy, else before the heading BEFORE, else at the
    end."""
    if not section:
        return text
    heading = section.split("\n", 1)[0]
    old = _section(text, heading)
    if old:
        return text.replace(old, section)
    at = text.find(f"\n{before}\n")
    if at < 0:
        return text.rstrip("\n") + "\n\n" + section
    return text[: at + 1] + section + "\n" + text[at + 1 :]


def _fmt_count(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def write_experiments_md(result: dict[str, Any], path: Path, json_path: Path) -> Path:
    """Put this experiments run's section into RESULTS.md (the rest of the file untouched)."""
    args = result["args"]
    summary = result["summary"]
    facts: dict[str, dict[str, Any]] = result.get("splits", {})
    configs = [c for c in EXPERIMENT_CONFIGS if c.key in summary]
    m = result["machine"]
    r = ratios_to_baseline(summary)
    missed = [t for t in result.get("targets", []) if t["met"] is False]
    lines = [
        EXPERIMENTS_HEADING,
        "",
        f"Generated by `{result['command']}` ({args['runs']} run(s) of {args['duration']:g} s per "
        "step and server, medians; the whole run took "
        f"{result['elapsed_s'] / 60:.0f} min). Raw numbers: "
        f"`benchmarks/results/{json_path.name}`. "
        + (
            f"Each run starts the three servers together and loads them in turn: each step is "
            f"{args['rounds']} rounds of {args['duration'] / args['rounds']:g} s slices, one per "
            "server, the order rotating; the targets are judged on the median over every round "
            "of every run of the round's ratio, the servers seconds apart "
            "(benchlib/interleave.py, docs/benchmark-noise.md). "
            if args.get("rounds")
            else "Each run starts the three servers in turn (before interleaving). "
        )
        + "Method as for the tables above (each server "
        "pinned to CPU 0, wrk, redis-server and the harness to CPU 1; closed loop); this run's "
        "machine: "
        f"{m['nproc']} CPUs: {m['cpu_model']}; Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if k in ("onnxruntime", "bentoml"))
        + ".",
        "",
        "Each server is `rtml serve` of the fraud example's Model + FeatureView with a Redis read "
        "per request and the L1 cache off (as `rtml-redis`), following a traffic plan file "
        "(`--traffic`, written with `plan_json(TrafficPlan(...))`): a plan without an experiment; "
        "a canary whose candidate (the example's `candidate.onnx`, same signature as "
        "`model.onnx`) answers 50%; a shadow plan whose candidate also scores 100% of requests "
        "off the response path. wrk's Lua script sends a random one of the "
        f"{result.get('entities', 'materialised')} cards per request as `entity_id`, the "
        "sticky key, so the split is by entity as in production. Every server was checked to "
        "apply its plan (`rtml_candidate_weight` = its percent, no `rtml_candidate_load_error`) "
        "before it was loaded.",
        "",
        *_table(result, True, configs),
        "",
        f"| ÷ {BASELINE} | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "| --- |" + " ---: |" * len(COLUMNS),
        *[
            f"| {c.key} | "
            + " | ".join(f"{r[c.key][k]:.3f}x" if k in r[c.key] else "-" for k, _, _ in COLUMNS)
            + " |"
            for c in configs
            if c.key in r
        ],
        "",
        "### Targets",
        "",
        "| target | measured | limit | met |",
        "| --- | ---: | ---: | :---: |",
        *[
            f"| {t['name']} | {t['measured']} | {t['limit']} | "
            f"{'yes' if t['met'] else 'no' if t['met'] is False else '-'} |"
            for t in result.get("targets", [])
        ],
        "",
        "### Who answered (the runtime's /metrics)",
        "",
        "Differences of the runtime's counters over the measured steps (c=1, 16 and 64; not "
        "the warm-up), summed over the runs: `rtml_requests_total` by `variant`, and "
        "`rtml_shadow_dropped_total`.",
        "",
        "| server | champion answered | candidate answered | candidate share (per run) "
        "| shadow scored (ok) | shadow dropped | not ok |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for c in configs:
        f = facts.get(c.key, {})
        share = f.get("candidate_share_pct")
        per_run = ", ".join(f"{x:.2f}" for x in f.get("candidate_share_pct_per_run", []) if x)
        lines.append(
            f"| {c.key} | {_fmt_count(f.get('champion'))} | {_fmt_count(f.get('candidate'))} | "
            + (f"{share:.2f}% ({per_run})" if share else "-")
            + f" | {_fmt_count(f.get('shadow_scored'))} ({_fmt_count(f.get('shadow_ok'))}) | "
            f"{_fmt_count(f.get('shadow_dropped'))} | {_fmt_count(f.get('not_ok'))} |"
        )
    lines += [
        "",
        "### Per run",
        "",
        "| server | run | c=1 p50 ms | c=1 p99 ms | c=16 p99 ms | max req/s (c=16, 64) "
        "| load avg before → after | disturbed steps |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for c in configs:
        for run in result["runs"][c.key]:
            if "c1" not in run:
                lines.append(f"| {c.key} | {run['run']} | FAILED | | | | | |")
                continue
            steps = [run[f"c{n}"] for n in (1, 16, 64) if f"c{n}" in run]
            lines.append(
                f"| {c.key} | {run['run']} | {run['c1']['p50_ms']:.3f} | "
                f"{run['c1']['p99_ms']:.3f} | "
                + (f"{run['c16']['p99_ms']:.2f}" if "c16" in run else "-")
                + f" | {run.get('saturation_rps', 0):,.0f} | "
                f"{run['load_before'][0]:.2f} → {run['load_after'][0]:.2f} | "
                f"{sum(1 for st in steps if st.get('disturbed'))}/{len(steps)} |"
            )
    lines += ["", *_experiment_notes(result, missed), ""]
    text = path.read_text() if path.exists() else "# rtml benchmarks\n"
    path.write_text(_with_section(text, "\n".join(lines).rstrip("\n") + "\n"))
    return path


def _experiment_notes(result: dict[str, Any], missed: list[dict[str, Any]]) -> list[str]:
    notes = result.get("notes") or []
    out = [f"- {n}" for n in notes]
    shadow = ratios_to_baseline(result["summary"]).get("rtml-shadow-100", {})
    if "saturation_rps" in shadow:
        out.append(
            "- Shadow at 100% scores every request twice on the server's one core (the worker "
            "thread shares CPU 0 with the event loop): its saturation is "
            f"{shadow['saturation_rps']:.2f}x the baseline's, and its c=16 p99 "
            f"{shadow.get('c16_p99_ms', float('nan')):.2f}x; not a target (the bounded queue "
            "drops rather than queues without end; drops are in the table above)."
        )
    if missed:
        out.append(
            "- **Missed**: "
            + "; ".join(f"{t['name']}: {t['measured']} (limit {t['limit']})" for t in missed)
            + ". See the per-run table for how much the runs themselves vary."
        )
    else:
        out.append("- Every target above was met in this run.")
    return out
