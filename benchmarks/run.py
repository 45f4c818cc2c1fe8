"""Side by side, one run: rtml against the floors, KServe and BentoML, on the same model.

    python benchmarks/run.py [--runs 3] [--duration 10] [--quick] [--soak] [--servers a,b]
    python benchmarks/run.py --suite experiments     # no experiment vs 50% canary vs shadow
    python benchmarks/run.py --suite floors          # rtml vs the bare app and the Redis floor
    python benchmarks/run.py --suite scale --models 1000   # the operator on an API-only cluster

The main, experiments and floors suites build examples/fraud into a temp dir, start a private
redis-server, register and materialise the FeatureView with rtml's Feast code, then start each
server pinned to CPU 0 and drive it with wrk pinned to CPU 1 (closed loop, fixed duration). Writes
benchmarks/results/<timestamp>.json and regenerates benchmarks/RESULTS.md. The scale suite
(benchlib.scale) starts a local control plane and `rtml operator` instead. See README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO / "bentos"), str(REPO)]  # REPO: tests.redis_server

from benchlib.configs import BY_KEY, PYTHONPATH, SUITES, ServerConfig  # noqa: E402
from benchlib.experiments import experiment_targets, splits  # noqa: E402
from benchlib.fixture import (  # noqa: E402
    Fixture,
    build_fixture,
    register_features,
    start_redis,
)
from benchlib.floor_report import write_floors_md  # noqa: E402
from benchlib.interleave import measure_together  # noqa: E402
from benchlib.machine import KSERVE, NOT_USED, control_plane_facts, machine_facts  # noqa: E402
from benchlib.measure import (  # noqa: E402
    measure,
    prepare,
)
from benchlib.procs import LOAD_CPU, SERVER_CPU, load_average, pinned  # noqa: E402
from benchlib.profile import profile_rtml  # noqa: E402
from benchlib.report import format_row, write_experiments_md, write_results_md  # noqa: E402
from benchlib.scale import goals, run_scale, summary_of  # noqa: E402
from benchlib.scale_report import write_scale_md  # noqa: E402
from benchlib.soak import run_soak  # noqa: E402
from benchlib.summary import floor_targets, medians, score_check, targets  # noqa: E402
from benchlib.venvs import venv_for  # noqa: E402

RESULTS = HERE / "results"


def log(message: str) -> None:
    print(message, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--runs",
        type=int,
        default=None,
        help="runs per server (scale: whole runs); medians are reported (default 3; scale: 1)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per step")
    p.add_argument("--quick", action="store_true", help="1 run of 3 s per step: a smoke test")
    p.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="experiments: each step is this many slices of --duration/ROUNDS s per server, "
        "the servers loaded in turn (benchlib/interleave.py)",
    )
    p.add_argument(
        "--suite",
        choices=sorted([*SUITES, "scale"]),
        default="main",
        help="main: rtml against the floors and anchors; experiments: rtml with no experiment, "
        "a 50%% canary and a 100%% shadow (RESULTS.md's experiments section only); floors: "
        "rtml (BentoML- and uvicorn-hosted) beside the bare app and the Redis floor "
        "(RESULTS.md's 'Floors for the feature path' section only); scale: "
        "--models Models reconciled by the operator on an API-only cluster (its section only)",
    )
    p.add_argument("--models", type=int, default=1000, help="scale: how many Models")
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=None,
        help="scale: the operator's RTML_RESYNC_SECONDS (default: its own, 60 s)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="scale: seconds to wait for every Model to be done before measuring the rest",
    )
    p.add_argument(
        "--servers",
        default=None,
        help="comma-separated subset of the suite's servers (default: all of them); main: "
        + ", ".join(c.key for c in SUITES["main"])
        + "; experiments: "
        + ", ".join(c.key for c in SUITES["experiments"])
        + "; floors: "
        + ", ".join(c.key for c in SUITES["floors"]),
    )
    p.add_argument(
        "--note",
        action="append",
        default=[],
        help="a line for the experiments, floors or scale section's notes (repeatable)",
    )
    p.add_argument(
        "--soak", action="store_true", help="then 5 minutes of rtml at 70%% of saturation"
    )
    p.add_argument("--soak-seconds", type=float, default=300.0, help=argparse.SUPPRESS)
    p.add_argument(
        "--profile",
        choices=["auto", "always", "never"],
        default="auto",
        help="py-spy profile of rtml under load: when a target is missed (auto), always, never",
    )
    p.add_argument("--no-markdown", action="store_true", help="write the JSON only")
    p.add_argument(
        "--report-only",
        type=Path,
        metavar="RESULT.json",
        help="regenerate RESULTS.md from an earlier result; run nothing",
    )
    p.add_argument(
        "--merge-into",
        type=Path,
        metavar="RESULT.json",
        help="replace the selected servers' runs in an earlier result (e.g. ones a busy machine "
        "disturbed) and report the merged result",
    )
    args = p.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.suite == "scale" else 3
    if args.quick:
        args.runs, args.duration = 1, 3.0
    if args.suite == "scale":
        if args.soak or args.merge_into:
            p.error("--soak and --merge-into belong to the main and experiments suites")
        return args
    suite = SUITES[args.suite]
    if args.servers is None:
        args.servers = ",".join(c.key for c in suite)
    unknown = [k for k in args.servers.split(",") if BY_KEY.get(k) not in suite]
    if unknown:
        p.error(f"unknown servers in the {args.suite} suite: {', '.join(unknown)}")
    if args.suite != "main" and args.soak:
        p.error("--soak belongs to the main suite")
    return args


def preflight() -> None:
    missing = [t for t in ("wrk", "taskset", "redis-server") if not _which(t)]
    if missing:
        sys.exit(
            f"missing tools: {', '.join(missing)} (apt-get install wrk util-linux redis-server)"
        )
    if len(os.sched_getaffinity(0) | {SERVER_CPU, LOAD_CPU}) < 2 or (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 CPUs: the server is pinned to CPU 0, the load generator to CPU 1")


def _which(tool: str) -> bool:
    return any((Path(d) / tool).exists() for d in os.environ.get("PATH", "").split(os.pathsep))


def run_floors(fixture: Fixture, log_dir: Path) -> dict[str, Any]:
    log(f"floors: ONNX Runtime one row, Redis HGET, Feast reads (pinned to CPU {SERVER_CPU})")
    assert fixture.feast_repo is not None
    argv = pinned(
        SERVER_CPU,
        [
            sys.executable,
            str(HERE / "floors.py"),
            "--model",
            str(fixture.model_path),
            "--redis-url",
            fixture.redis_url,
            "--feast-repo",
            str(fixture.feast_repo),
            "--manifest",
            str(fixture.manifest),
            "--view",
            fixture.view_name,
            "--features",
            ",".join(fixture.feature_names),
            "--join-key",
            fixture.join_key,
            "--ids",
            str(fixture.ids_file),
        ],
    )
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    (log_dir / "floors.log").write_text(out.stderr)
    if out.returncode != 0:
        log(f"  !! floors failed:\n{out.stderr[-2000:]}")
        return {"error": out.stderr[-2000:]}
    floors: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    for name, v in floors.items():
        shown = f"{v['median_us']} µs median" if isinstance(v, dict) else v
        log(f"  {name:40} {shown}")
    return floors


def merge(result: dict[str, Any], base: dict[str, Any], args: argparse.Namespace) -> None:
    """The base result with this run's servers (and soak, when run) in place of its own."""
    runs = {**base["runs"], **result["runs"]}
    result["runs"] = {c.key: runs[c.key] for c in SUITES[args.suite] if c.key in runs}
    result["merged"] = {
        "base": args.merge_into.name,
        "base_command": base["command"],
        "base_elapsed_s": base.get("elapsed_s"),
        "rerun": [k for k in result["runs"] if k in args.servers.split(",")],
    }
    result["entities"] = base.get("entities", result.get("entities"))
    if not args.soak and "soak" in base:
        result["soak"] = base["soak"]
    packages = result["machine"]["packages"]
    if packages.get(KSERVE) == NOT_USED:
        packages[KSERVE] = base["machine"]["packages"].get(KSERVE, NOT_USED)


def measure_interleaved(
    args: argparse.Namespace,
    selected: list[ServerConfig],
    fixture: Fixture,
    log_dir: Path,
    kserve_python: Path,
) -> dict[str, dict[str, Any]]:
    """One run of the experiments suite: every server started, then each step of
    --duration per server as --rounds slices, the servers loaded in turn; their results."""
    measured = [
        prepare(c, fixture, log_dir, kserve_python, log, quiet=i == 0)
        for i, c in enumerate(selected)
    ]
    measure_together(measured, [fixture] * len(measured), args.rounds, args.duration, log)
    return {m.config.key: m.out for m in measured}


def measure_all(
    args: argparse.Namespace,
    result: dict[str, Any],
    selected: list[ServerConfig],
    log_dir: Path,
    kserve_python: Path,
) -> None:
    """Fixture, floors, every server x run, then the soak and profiles; fills RESULT in."""
    with tempfile.TemporaryDirectory(prefix="rtml-bench-") as tmp:
        root = Path(tmp)
        fixture = build_fixture(root, log)
        result["entities"] = len(fixture.entity_ids)
        redis, redis_url = start_redis(root, log)
        fixture.redis_pid = redis.pid
        try:
            register_features(fixture, redis_url, log)
            experiments = args.suite == "experiments"
            if args.suite == "main":
                result["floors"] = run_floors(fixture, log_dir)
            for run in range(1, args.runs + 1):
                log(f"run {run}/{args.runs}")
                if experiments:
                    for key, r in measure_interleaved(
                        args, selected, fixture, log_dir, kserve_python
                    ).items():
                        r["run"] = run
                        result["runs"][key].append(r)
                        log(format_row(BY_KEY[key], r))
                    continue
                for config in selected:
                    r = measure(config, fixture, args.duration, log_dir, kserve_python, log)
                    r["run"] = run
                    result["runs"][config.key].append(r)
                    log(format_row(config, r))
            if args.merge_into:
                merge(result, json.loads(args.merge_into.read_text()), args)
            result["summary"] = {k: medians(v) for k, v in result["runs"].items()}
            if experiments:
                result["splits"] = splits(result)
                result["targets"] = [t.__dict__ for t in experiment_targets(result)]
                return
            if args.soak:
                result["soak"] = run_soak(
                    fixture, result["summary"], log_dir, args.soak_seconds, log
                )
            checks = (
                targets(result["summary"], result.get("soak"))
                if args.suite == "main"
                else floor_targets(result["summary"])
            )
            checks += score_check(result["runs"])
            result["targets"] = [t.__dict__ for t in checks]
            missed = [t for t in result["targets"] if t["met"] is False]
            if args.profile == "always" or (args.profile == "auto" and missed):
                measured = [k for k, runs in result["runs"].items() if runs]
                result["profiles"] = profile_rtml(fixture, missed, log_dir, log, measured)
        finally:
            redis.stop()


WRITERS = {
    "experiments": write_experiments_md,
    "scale": write_scale_md,
    "floors": write_floors_md,
}


def run_scale_suite(args: argparse.Namespace, command: str, stamp: str) -> int:
    """--suite scale: whole runs of benchlib.scale, medians, goals, its RESULTS.md section."""
    from rtml.dev.tools import bin_dir

    started = time.monotonic()
    log_dir = RESULTS / "logs" / stamp
    log_dir.mkdir(parents=True)
    log(f"rtml benchmarks {stamp} (scale): {args.models} Models x {args.runs} run(s)")
    result: dict[str, Any] = {
        "command": command,
        "suite": "scale",
        "started": stamp,
        "notes": args.note,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": control_plane_facts(bin_dir()),
        "runs": [],
    }
    for run in range(1, args.runs + 1):
        log(f"run {run}/{args.runs}")
        run_dir = log_dir / f"run{run}"
        run_dir.mkdir()
        with tempfile.TemporaryDirectory(prefix="rtml-scale-") as tmp:
            result["runs"].append(
                run_scale(args.models, args.resync_seconds, args.timeout, Path(tmp), run_dir, log)
            )
    result["summary"] = summary_of(result["runs"])
    result["goals"] = goals(result["summary"])
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    json_path = RESULTS / f"{stamp}.json"
    json_path.write_text(json.dumps(result, indent=1))
    log(f"wrote {json_path.relative_to(REPO)} ({result['elapsed_s']:.0f}s in all)")
    for g in result["goals"]:
        met = {True: "met", False: "MISSED", None: "not measured"}[g["met"]]
        log(f"  {g['name']}: {g['measured']} {g['unit']} (goal <= {g['limit']:g}) {met}")
    if not args.no_markdown:
        md = write_scale_md(result, HERE / "RESULTS.md", json_path)
        log(f"wrote {md.relative_to(REPO)}")
    return 0 if all(r.get("wall_s") is not None for r in result["runs"]) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        earlier = json.loads(args.report_only.read_text())
        write = WRITERS.get(earlier.get("suite"), write_results_md)
        md = write(earlier, HERE / "RESULTS.md", args.report_only)
        log(f"wrote {md.relative_to(REPO)} from {args.report_only}")
        return 0
    if args.suite == "scale":
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        command = "python benchmarks/run.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        return run_scale_suite(args, command, stamp)
    preflight()
    os.sched_setaffinity(0, {LOAD_CPU})  # the harness itself stays off the server's CPU
    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    # --no-markdown says where the result goes, not how it was measured: a section later written
    # from the JSON by --report-only shows the command that measures the same again.
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--no-markdown"]
    command = "python benchmarks/run.py " + shlex.join(given)
    selected: list[ServerConfig] = [BY_KEY[k] for k in args.servers.split(",")]
    RESULTS.mkdir(exist_ok=True)
    log_dir = RESULTS / "logs" / stamp
    log_dir.mkdir(parents=True)
    log(
        f"rtml benchmarks {stamp} ({args.suite}): {len(selected)} servers x {args.runs} runs x "
        f"{args.duration:g}s"
    )

    kserve_python = (
        venv_for(HERE / "requirements-kserve.txt", "venv-bench-kserve", log)
        if any(c.family == "kserve" for c in selected)
        else Path(sys.executable)
    )
    result: dict[str, Any] = {
        "command": command,
        "suite": args.suite,
        "started": stamp,
        "notes": args.note,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine_facts(kserve_python),
        "runs": {c.key: [] for c in selected},
    }
    measure_all(args, result, selected, log_dir, kserve_python)
    result["load_end"] = load_average()
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    json_path = RESULTS / f"{stamp}.json"
    json_path.write_text(json.dumps(result, indent=1))
    log(f"wrote {json_path.relative_to(REPO)} ({result['elapsed_s']:.0f}s in all)")
    if args.suite != "main":
        for t in result["targets"]:
            met = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
            log(f"  {t['name']}: {t['measured']} ({t['limit']}) {met}")
    if not args.no_markdown:
        write = WRITERS.get(args.suite, write_results_md)
        md = write(result, HERE / "RESULTS.md", json_path)
        log(f"wrote {md.relative_to(REPO)}")
    failed = [k for k, runs in result["runs"].items() if any("error" in r for r in runs)]
    if failed:
        log(f"!! FAILED: {', '.join(failed)} (see the log lines above)")
        return 1
    differ = [
        t["name"] for t in result.get("targets", []) if "scores" in t["name"] and not t["met"]
    ]
    if differ:
        log(f"!! DIFFERENT SCORES: {'; '.join(differ)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
