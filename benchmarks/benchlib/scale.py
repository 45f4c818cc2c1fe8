"""The scale suite: N Models reconciled from empty by `rtml operator` on an API-only cluster.

One run: a fresh local control plane (etcd, kube-apiserver with an audit log, kube-controller-
manager; no node, so no pod runs), rtml's CRDs, the operator as a host process with a client
certificate of its own, then N feature-less Models created at once. Measured: the wall time
until every Model shows what the operator writes on such a cluster, the operator's API writes
(benchlib.audit), its RSS, the writes during a resync that changes nothing, and how long it
takes to exit on SIGTERM with N Models. README.md ("Scale") says what each number means.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tests.unit.runtime.onnx_fixtures import write_sum_model

from benchlib.audit import OPERATOR_USER, AuditTail, apiserver_flags, audit_policy, summarise
from benchlib.configs import PYTHONPATH
from benchlib.procs import (
    cpu_seconds,
    cpu_times,
    free_port,
    harness_cpu_seconds,
    load_average,
    tree_cpu_seconds,
)
from rtml.dev import certs
from rtml.dev.cluster import LocalControlPlane
from rtml.dev.kubeconfig import write_kubeconfig
from rtml.dev.process import Managed
from rtml.dev.tools import ensure_tools
from rtml.operator.client import KubeClient
from rtml.operator.render.model import OWNED_KINDS

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "scale"
GROUP, VERSION = "rtml.dev", "v1alpha1"
# What the operator writes once it has seen the Deployment controller's view of a Deployment
# whose pod cannot run (no node): docs/model-status.md. `Ready` is there for a cluster with one,
# ProgressDeadlineExceeded for a run so slow that the first Deployments reached their 600 s.
SETTLED_REASONS = frozenset({"ReplicasUnavailable", "Ready", "ProgressDeadlineExceeded"})
PROGRESS_EVERY_S = 5.0
QUIET_S = 10.0  # no write by the operator for this long: the rollout's reconciles are over
QUIET_MAX_S = 30.0  # ... or this long after the last Model was done (resyncs write too)
MIB = 1024.0

Log = Callable[[str], None]


# kube-controller-manager's client limit (default 20 requests/s per controller). At 20, its
# Deployment and ReplicaSet controllers need ~200 s for 1,000 Deployments' ReplicaSets, pods
# and status writes, and "every Model done" waits for them: the run measured the controller
# manager, not the operator. Clusters of this size raise it likewise (README.md, "Scale").
CONTROLLER_QPS = 200


class AuditedControlPlane(LocalControlPlane):
    """The local control plane with the API server's audit log on (benchlib.audit)."""

    def __init__(self, workdir: Path, bin_dir: Path, audit_log: Path) -> None:
        super().__init__(workdir, bin_dir)
        self.audit_log = audit_log
        self.audit_policy = workdir.parent / "audit-policy.yaml"

    def _launch(self, name: str, argv: list[str]) -> Managed:
        if name == "kube-apiserver":
            self.audit_policy.write_text(yaml.safe_dump(audit_policy()))
            argv = [*argv, *apiserver_flags(self.audit_policy, self.audit_log)]
        if name == "kube-controller-manager":
            argv = [
                *argv,
                f"--kube-api-qps={CONTROLLER_QPS}",
                f"--kube-api-burst={2 * CONTROLLER_QPS}",
            ]
        return super()._launch(name, argv)

    def operator_kubeconfig(self) -> Path:
        """A kubeconfig for OPERATOR_USER (in system:masters, as the admin): its requests are
        the ones the audit log keeps."""
        cert, key = self.cert_dir / "bench-operator.crt", self.cert_dir / "bench-operator.key"
        certs.issue_client_cert(self.certs, OPERATOR_USER, (certs.ADMIN_GROUP,), cert, key)
        path = self.workdir / "operator.kubeconfig"
        write_kubeconfig(
            path, self.server, ca_cert=self.ca_cert, client_cert=cert, client_key=key,
            user=OPERATOR_USER,
        )  # fmt: skip
        return path


def model_body(index: int, artifact: Path, digest: str) -> dict[str, Any]:
    """A Model like examples/fraud's without a FeatureView: one request feature, the tiny
    sum model (tests/unit/runtime/onnx_fixtures.py) as a local artifact the operator's
    signature check reads, every other field at its default."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Model",
        "metadata": {"name": f"m-{index:04d}", "namespace": NAMESPACE},
        "spec": {
            "version": "v1",
            "artifact": {"uri": f"file://{artifact}", "sha256": digest},
            "features": {"requestFeatures": ["amount"]},
        },
    }


def model_state(obj: dict[str, Any]) -> tuple[bool, str | None]:
    """(status observed the current generation, its Ready condition's reason or None)."""
    status = obj.get("status") or {}
    observed = status.get("observedGeneration") == obj["metadata"].get("generation")
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    return observed, (ready or {}).get("reason") if ready else None


class Informer:
    """A list + watch of one resource in NAMESPACE, kept in memory (name -> what `keep` keeps).

    Progress is read from watches rather than lists every few seconds: 1,000 Models listed
    every 5 s would cost the API server (and the harness) more than the operator's own reads.
    """

    def __init__(
        self, api: Any, group: str, version: str, plural: str, keep: Callable[[dict[str, Any]], Any]
    ) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api)
        self.where = (group, version, NAMESPACE, plural)
        self.keep = keep
        self.items: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{plural}")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.items)

    def _run(self) -> None:
        from kubernetes import watch

        rv: str | None = None
        while not self.stopped.is_set():
            try:
                if rv is None:
                    listing = self.custom.list_namespaced_custom_object(*self.where)
                    with self.lock:
                        self.items = {o["metadata"]["name"]: self.keep(o) for o in listing["items"]}
                    rv = listing["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(
                    self.custom.list_namespaced_custom_object, *self.where,
                    resource_version=rv, timeout_seconds=30, allow_watch_bookmarks=True,
                )  # fmt: skip
                for event in stream:
                    obj = event["object"]
                    if event["type"] == "ERROR":  # e.g. 410 Gone: list again
                        rv = None
                        break
                    rv = obj["metadata"]["resourceVersion"]
                    if event["type"] == "BOOKMARK":
                        continue
                    with self.lock:
                        if event["type"] == "DELETED":
                            self.items.pop(obj["metadata"]["name"], None)
                        else:
                            self.items[obj["metadata"]["name"]] = self.keep(obj)
                    if self.stopped.is_set():
                        return
            except Exception:  # a dropped connection: list and watch again
                rv = None
                time.sleep(1)


@dataclass
class OperatorRun:
    """`rtml operator` as a host process, its log, and its memory sampled every second."""

    kubeconfig: Path
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    rss_samples: list[tuple[float, float]] = field(default_factory=list)  # (t, MiB)
    started_at: float = 0.0
    _stop_sampling: threading.Event = field(default_factory=threading.Event)

    def start(self, log: Log) -> None:
        liveness = f"http://127.0.0.1:{free_port()}/healthz"
        argv = [sys.executable, "-m", "rtml.cli", "operator", "--kubeconfig", str(self.kubeconfig),
                "--liveness", liveness]  # fmt: skip
        self.started_at = time.time()
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.proc.returncode}; see "
                                   f"{self.log_path}:\n{self.log_tail()}")  # fmt: skip
            with contextlib.suppress(OSError), urllib.request.urlopen(liveness, timeout=2) as r:
                if r.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the operator's liveness endpoint never answered 200; see "
                                   f"{self.log_path}:\n{self.log_tail()}")  # fmt: skip
            time.sleep(0.3)
        log(f"operator pid {self.proc.pid} live in {time.time() - self.started_at:.1f}s")
        threading.Thread(target=self._sample, daemon=True, name="rss").start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def status_kib(self, key: str) -> int:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def _sample(self) -> None:
        while not self._stop_sampling.wait(1.0):
            rss = self.status_kib("VmRSS")
            if rss:
                self.rss_samples.append((round(time.time() - self.started_at, 1), rss / MIB))

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_lines_from(self, offset: int) -> tuple[list[dict[str, Any]], int]:
        """The JSON log records written since byte OFFSET (whole lines), and the new offset."""
        with self.log_path.open("rb") as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        records = []
        for line in data[:end].decode(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    records.append(json.loads(line))
        return records, offset + end

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def sigterm(self, timeout: float = 60.0) -> tuple[float, int | None]:
        """SIGTERM to the operator's process (what the kubelet sends); seconds until it exited,
        and its exit code (None: still running after TIMEOUT, then SIGKILLed)."""
        assert self.proc is not None
        self._stop_sampling.set()
        began = time.monotonic()
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - began
        self.kill()
        return took, code

    def kill(self) -> None:
        self._stop_sampling.set()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def install_crds(kube: KubeClient, log: Log) -> None:
    names = []
    for path in sorted((REPO / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                kube.apply(doc, field_manager="rtml-bench")
                names.append(doc["metadata"]["name"])
    deadline = time.monotonic() + 60
    for name in names:
        while True:
            crd = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", name) or {}
            conds = (crd.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"CRD {name} was not established within 60 s")
            time.sleep(0.2)
    log(f"installed {len(names)} CRDs from crds/")


def resource_versions(kube: KubeClient) -> dict[str, str]:
    """kind/name -> resourceVersion of the Models and every kind a Model may own."""
    out = {}
    for api_version, kind in [(f"{GROUP}/{VERSION}", "Model"), *OWNED_KINDS]:
        if not kube.serves(api_version, kind):
            continue
        for obj in kube.list_in(api_version, kind, NAMESPACE):
            out[f"{kind}/{obj['metadata']['name']}"] = obj["metadata"]["resourceVersion"]
    return out


def changed(before: dict[str, str], after: dict[str, str]) -> dict[str, int]:
    """Objects created, deleted or modified between two snapshots, counted by kind."""
    keys = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    return dict(Counter(k.split("/", 1)[0] for k in keys))


@dataclass
class Progress:
    models: int = 0
    deployments: int = 0
    observed: int = 0  # Deployment + status of the current generation with a Ready condition
    settled: int = 0  # ... and Ready's reason is the settled one
    reasons: Counter[str] = field(default_factory=Counter)


def progress(models: Informer, deployments: Informer) -> Progress:
    states = models.snapshot()
    have = deployments.snapshot()
    p = Progress(models=len(states), deployments=len(have))
    for name, (observed, reason) in states.items():
        p.reasons[reason or "none"] += 1
        if name in have and observed and reason is not None:
            p.observed += 1
            p.settled += reason in SETTLED_REASONS
    return p


def create_models(api: Any, bodies: list[dict[str, Any]]) -> None:
    """All at once: 8 threads POSTing, as `kubectl apply -f dir/` of many files would."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api)

    def create(body: dict[str, Any]) -> None:
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "models", body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, bodies))


def operator_env(root: Path, resync_seconds: float | None) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": PYTHONPATH,
        # Nothing listens there: an API-only cluster has no Prometheus.
        "RTML_PROMETHEUS_URL": "http://127.0.0.1:9",
        "RTML_METRICS_PORT": "0",
        "RTML_FEAST_PATH": str(root / "feast"),
        "RTML_SIGNATURE_CACHE_DIR": str(root / "signatures"),
    }
    if resync_seconds is not None:
        env["RTML_RESYNC_SECONDS"] = f"{resync_seconds:g}"
    else:
        env.pop("RTML_RESYNC_SECONDS", None)
    return env


def _reconciles(summary: dict[str, Any]) -> int:
    """GETs of a Model: every reconcile starts with exactly one (handlers._reconcile)."""
    return int(summary["reads_by_request"].get("get models", 0))


def _mib(kib: int) -> float:
    return round(kib / MIB, 1)


@contextlib.contextmanager
def control_plane(root: Path, log: Log) -> Iterator[AuditedControlPlane]:
    bin_dir = ensure_tools(log)
    plane = AuditedControlPlane(root / "cluster", bin_dir, root / "audit.log")
    plane.start()
    log(f"control plane (API-only, audit log on) ready in {plane.started_seconds:.1f}s")
    try:
        yield plane
    finally:
        plane.stop()


def run_scale(
    n: int,
    resync_seconds: float | None,
    timeout: float,
    root: Path,
    log_dir: Path,
    log: Log,
) -> dict[str, Any]:
    """One run; the numbers README.md's "Scale" section describes."""
    result: dict[str, Any] = {
        "models": n,
        "load_start": load_average(),
        "controller_qps": CONTROLLER_QPS,
    }
    with control_plane(root, log) as plane:
        result["control_plane_start_s"] = round(plane.started_seconds or 0.0, 1)
        from kubernetes import config

        api = config.new_client_from_config(str(plane.kubeconfig))
        kube = KubeClient(api)
        install_crds(kube, log)
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
                   field_manager="rtml-bench")  # fmt: skip
        artifact = write_sum_model(root / "model.onnx", ["amount"])
        digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
        bodies = [model_body(i, artifact, digest) for i in range(n)]

        audit = AuditTail(plane.audit_log)
        env = operator_env(root, resync_seconds)
        op = OperatorRun(plane.operator_kubeconfig(), log_dir / "operator.log", env)
        models = Informer(api, GROUP, VERSION, "models", model_state)
        deployments = Informer(api, "apps", "v1", "deployments", lambda _o: True)
        try:
            op.start(log)
            result["operator_start_rss_mib"] = _mib(op.status_kib("VmRSS"))
            models.start()
            deployments.start()
            bench = Bench(n, resync_seconds or 60.0, op, audit, kube, models, deployments,
                          result, log, plane)  # fmt: skip
            bench.rollout(api, bodies, timeout)
            bench.noop_resync(bench.quiet(), resync_seconds is not None, timeout)
            bench.sigterm()
        finally:
            models.stop()
            deployments.stop()
            op.kill()
            api.close()
            audit.poll()
            result["operator_requests_total"] = len(audit.requests)
    result["load_end"] = load_average()
    return result


@dataclass
class Bench:
    """One run's parts, and the phases that measure them (each fills `result` in)."""

    n: int
    interval: float  # the operator's resync period
    op: OperatorRun
    audit: AuditTail
    kube: KubeClient
    models: Informer
    deployments: Informer
    result: dict[str, Any]
    log: Log
    plane: LocalControlPlane

    def cpu_census(self) -> dict[str, float]:
        """CPU seconds so far of each process that shares the machine during a run."""
        spent = {p.name: tree_cpu_seconds(p.pid) for p in self.plane.processes}
        spent["operator"] = tree_cpu_seconds(self.op.pid)  # with a live `rtml feast-sweep`
        spent["harness"] = harness_cpu_seconds()
        return spent

    def rollout(self, api: Any, bodies: list[dict[str, Any]], timeout: float) -> None:
        """N Models at once, then wait until every one shows the operator's settled status."""
        n, result = self.n, self.result
        cpu_before, machine_before = self.cpu_census(), cpu_times(None)
        began = time.time()
        create_models(api, bodies)
        result["create_s"] = round(time.time() - began, 2)
        self.log(f"created {n} Models in {result['create_s']:.1f}s; waiting for the operator")
        observed_at = settled_at = None
        next_line = time.monotonic()
        while True:
            p = progress(self.models, self.deployments)
            now = time.time()
            if observed_at is None and p.observed >= n:
                observed_at = now
            if settled_at is None and p.settled >= n:
                settled_at = now
            if time.monotonic() >= next_line or settled_at is not None:
                self._progress_line(p, now - began)
                next_line += PROGRESS_EVERY_S
            if settled_at is not None or now - began > timeout:
                break
            time.sleep(0.5)
        result["observed_s"] = round(observed_at - began, 1) if observed_at else None
        result["wall_s"] = round(settled_at - began, 1) if settled_at else None
        result["done_at_end"] = p.settled
        result["ready_reasons"] = dict(p.reasons)
        result["operator_cpu_s_at_done"] = round(self.op.cpu_seconds(), 1)
        cpu_after, machine_after = self.cpu_census(), cpu_times(None)
        # Who used the CPUs between the first create and "every Model done" (or the timeout):
        # the wall time is only the operator's to the extent the CPUs were free for it.
        result["rollout_cpu_s"] = {
            name: round(spent - cpu_before.get(name, 0.0), 1) for name, spent in cpu_after.items()
        }
        result["rollout_machine_cpu_s"] = {
            "busy": round(machine_after.busy - machine_before.busy, 1),
            "steal": round(machine_after.steal - machine_before.steal, 1),
            "total": round(machine_after.total - machine_before.total, 1),
        }
        self.audit.poll()
        done = settled_at or time.time()
        rollout = summarise(self.audit.between(self.op.started_at, done))
        result["rollout"] = rollout
        result["rollout_writes_per_model"] = round(rollout["writes"] / n, 2)
        self.log(f"until every Model was done: {rollout['writes']} writes by the operator "
                 f"({result['rollout_writes_per_model']} per Model), {rollout['reads']} reads, "
                 f"{_reconciles(rollout)} GETs of a Model")  # fmt: skip
        if settled_at is None:
            self.log(f"!! only {p.settled}/{n} Models done after {timeout:.0f}s; Ready reasons: "
                     f"{dict(p.reasons)}")  # fmt: skip

    def _progress_line(self, p: Progress, elapsed: float) -> None:
        self.audit.poll()
        writes = sum(r.write for r in self.audit.requests)
        rss = _mib(self.op.status_kib("VmRSS"))
        self.log(f"  {elapsed:6.1f}s  Models done {p.settled}/{self.n} (Deployments "
                 f"{p.deployments}, status observed {p.observed})  operator RSS {rss:.0f} MiB  "
                 f"writes {writes}")  # fmt: skip

    def quiet(self) -> float:
        """Wait until the operator has written nothing for QUIET_S (the rollout's reconciles
        are over), at most QUIET_MAX_S: a resync round, no-op or not, writes too."""
        deadline = time.time() + QUIET_MAX_S
        while time.time() < deadline:
            self.audit.poll()
            if time.time() - (self.audit.last_write() or 0.0) >= QUIET_S:
                break
            time.sleep(1)
        self.result["quiet"] = time.time() < deadline
        return time.time()

    def noop_resync(self, start: float, env_set: bool, timeout: float) -> None:
        """A resync that changes nothing: from START until every Model was resynced once more
        (the operator logs `Model resynced` per Model), counting the operator's requests."""
        before = resource_versions(self.kube)
        offset = self.op.log_size()
        resynced: set[str] = set()
        # 1,000 Models once queued their first round behind 8 minutes of child events.
        limit = time.time() + max(3 * self.interval + 300, timeout)
        next_line = time.monotonic()
        while len(resynced) < self.n and time.time() < limit:
            records, offset = self.op.log_lines_from(offset)
            resynced |= {
                r.get("model", "") for r in records if r.get("message") == "Model resynced"
            }
            if time.monotonic() >= next_line:
                self.log(f"  no-op resync: {len(resynced)}/{self.n} Models resynced, "
                         f"{time.time() - start:.0f}s")  # fmt: skip
                next_line += PROGRESS_EVERY_S
            time.sleep(0.5)
        end = time.time()
        time.sleep(1)  # the audit log is written as each answer is sent; let the last one land
        self.audit.poll()
        noop = summarise(self.audit.between(start, end))
        noop["window_s"] = round(end - start, 1)
        noop["models_resynced"] = len(resynced)
        noop["reconciles"] = _reconciles(noop)
        noop["objects_changed"] = changed(before, resource_versions(self.kube))
        noop["resync_seconds"] = self.interval
        noop["resync_seconds_set_by_env"] = env_set
        self.result["noop"] = noop
        self.log(f"no-op resync: {noop['writes']} writes, {noop['reads']} reads in "
                 f"{noop['window_s']}s ({len(resynced)}/{self.n} Models resynced, "
                 f"{noop['reconciles']} GETs of a Model); objects "
                 f"changed: {noop['objects_changed'] or 'none'}")  # fmt: skip

    def sigterm(self) -> None:
        """SIGTERM while a resync round is queued in the handler pool (the hard case): wait
        for the next round's first `Model resynced` (at most one period and a minute)."""
        offset = self.op.log_size()
        until = time.time() + self.interval + 60
        busy = False
        while time.time() < until and not busy:
            records, offset = self.op.log_lines_from(offset)
            busy = any(r.get("message") == "Model resynced" for r in records)
            time.sleep(0.2)
        time.sleep(1.0)
        result, op = self.result, self.op
        result["rss_peak_mib"] = _mib(op.status_kib("VmHWM"))
        result["rss_end_mib"] = _mib(op.status_kib("VmRSS"))
        result["operator_cpu_s_at_end"] = round(op.cpu_seconds(), 1)
        took, code = op.sigterm()
        result["sigterm"] = {"exit_s": round(took, 2), "exit_code": code,
                             "during_resync_round": busy}  # fmt: skip
        result["rss_samples_mib"] = op.rss_samples[:: max(1, len(op.rss_samples) // 120)]
        self.log(f"SIGTERM {'during a resync round' if busy else 'while idle'}: exited in "
                 f"{took:.2f}s (code {code}); RSS peak {result['rss_peak_mib']} MiB, at the end "
                 f"{result['rss_end_mib']} MiB")  # fmt: skip


GOALS = (
    ("wall time, empty to every Model done", "wall_s", 60.0, "s"),
    ("operator RSS, peak (VmHWM)", "rss_peak_mib", 200.0, "MiB"),
    ("writes in one no-op resync", "noop_writes", 0.0, ""),
    ("SIGTERM to exit", "exit_s", 10.0, "s"),
)


def goals(summary: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, key, limit, unit in GOALS:
        value = summary.get(key)
        out.append({
            "name": name, "key": key, "measured": value, "limit": limit, "unit": unit,
            "met": None if value is None else value <= limit,
        })  # fmt: skip
    return out


def summary_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs of the numbers the goals are about, and a few more."""
    import statistics

    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return round(statistics.median(known), 2) if len(known) == len(values) and known else None

    picks: dict[str, Callable[[dict[str, Any]], float | None]] = {
        "wall_s": lambda r: r.get("wall_s"),
        "observed_s": lambda r: r.get("observed_s"),
        "create_s": lambda r: r.get("create_s"),
        "rollout_writes": lambda r: (r.get("rollout") or {}).get("writes"),
        "rollout_writes_per_model": lambda r: r.get("rollout_writes_per_model"),
        "rss_peak_mib": lambda r: r.get("rss_peak_mib"),
        "rss_end_mib": lambda r: r.get("rss_end_mib"),
        # Only a window in which every Model was resynced measures one no-op resync.
        "noop_writes": lambda r: (
            (r.get("noop") or {}).get("writes")
            if (r.get("noop") or {}).get("models_resynced") == r["models"]
            else None
        ),
        "noop_reads": lambda r: (r.get("noop") or {}).get("reads"),
        "noop_window_s": lambda r: (r.get("noop") or {}).get("window_s"),
        "exit_s": lambda r: (r.get("sigterm") or {}).get("exit_s"),
        "operator_cpu_s_at_done": lambda r: r.get("operator_cpu_s_at_done"),
    }
    return {k: median([pick(r) for r in runs]) for k, pick in picks.items()}
