"""The local cluster with a real node: pods run; the chart's operator runs as a pod; a
FeatureView's materialization Job runs as a pod into the cluster's Redis; a Model becomes a
runtime pod that reads those features and answers through its Service; rollouts, deleted and
stopped pods and a changed artifact are handled; `down` leaves the host as it was.

Nothing stands in for the kubelet: pods are started by containerd and runc from the images
`rtml dev images build` made, under the Pod Security `restricted` profile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kubernetes
import pandas as pd
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from rtml.dev.addons import start_prometheus_adapter
from rtml.dev.cluster import LocalControlPlane
from rtml.dev.errors import DevError
from rtml.dev.node import KUBELET_SYSCTLS
from rtml.dev.nodeconfig import BRIDGE, BRIDGE_IP, CGROUP_ROOT, POD_CIDR
from rtml.dev.postgres import PostgresServer
from rtml.dev.stack import CONTAINER_SECURITY, POD_SECURITY, Stack, helm_install
from rtml.dev.tools import ensure_node_tools, ensure_tools
from rtml.operator.render.container import PRESTOP_SLEEP_SECONDS
from tests.kube import REPO, condition, wait_for
from tests.prometheus import (
    PodDiscoveryBridge,
    PrometheusServer,
    api_pod_lister,
    http_pod_scrape_config,
)
from tests.runtime_proc import run_rtml

pytestmark = [pytest.mark.node, pytest.mark.images, pytest.mark.helm]
CHART = REPO / "charts" / "rtml"
LOGS = REPO / ".test-logs" / "node"  # the cluster's logs, replaced at the module's end
RESULTS = REPO / ".test-logs" / "node-results"  # what the tests measured


def host_snapshot() -> dict[str, Any]:
    """What the node may change on the host and must leave as it found it."""
    return {
        "sysctls": {n: Path("/proc/sys", n).read_text().strip() for n in KUBELET_SYSCTLS},
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
        "bridge": Path(f"/sys/class/net/{BRIDGE}").exists(),
        "links": sorted(p.name for p in Path("/sys/class/net").iterdir()),
        "cgroups": sorted(str(p) for p in Path("/sys/fs/cgroup").glob(f"*{CGROUP_ROOT}")),
        "nft": subprocess.run(
            ["nft", "list", "tables"], capture_output=True, text=True, check=False
        ).stdout,
        "netns": sorted(p.name for p in Path("/run/netns").glob("*"))
        if Path("/run/netns").exists()
        else [],
        "routes": subprocess.run(
            ["ip", "route"], capture_output=True, text=True, check=False
        ).stdout,
    }


def mounts_under(path: Path) -> list[str]:
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p.startswith(str(path))]


def node_processes(path: Path) -> list[str]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmd:
            found.append(cmd[:120])
    return found


@pytest.fixture(scope="module")
def node_cluster(
    tmp_path_factory: pytest.TempPathFactory, built_images: dict[str, str]
) -> Iterator[LocalControlPlane]:
    if os.geteuid() != 0:
        pytest.fail("the node needs root (kubelet, containerd, a bridge)")
    before = host_snapshot()
    workdir = tmp_path_factory.mktemp("node-cluster")
    plane = LocalControlPlane(
        workdir, ensure_tools(lambda _m: None), ensure_node_tools(lambda _m: None)
    )
    try:
        plane.start(timeout=600)
    except BaseException:
        _keep_logs(plane)
        raise
    try:
        yield plane
    finally:
        _keep_logs(plane)
        plane.stop()
    assert host_snapshot() == before, "the node left host state behind"
    assert mounts_under(workdir) == []
    assert node_processes(workdir) == []


def _keep_logs(plane: LocalControlPlane) -> None:
    if plane.logs_dir.is_dir():
        shutil.rmtree(LOGS, ignore_errors=True)
        shutil.copytree(plane.logs_dir, LOGS)


def kubectl(plane: LocalControlPlane, *args: str, stdin: str | None = None) -> str:
    binary = plane.bin_dir / "kubectl"
    result = subprocess.run([str(binary), f"--kubeconfig={plane.kubeconfig}", *args],
                            input=stdin, capture_output=True, text=True, timeout=300,
                            check=False)  # fmt: skip
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def apply(plane: LocalControlPlane, *docs: dict[str, Any]) -> None:
    kubectl(plane, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs))


def restricted_namespace(plane: LocalControlPlane) -> str:
    name = f"n-{uuid.uuid4().hex[:6]}"
    apply(plane, {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})  # fmt: skip
    return name


def redis_pod(ns: str, image: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "redis", "namespace": ns, "labels": {"app": "redis"}},
         "spec": {"securityContext": POD_SECURITY, "containers": [
             {"name": "redis", "image": image, "imagePullPolicy": "Never",
              "ports": [{"containerPort": 6379}], "securityContext": CONTAINER_SECURITY,
              "readinessProbe": {"tcpSocket": {"port": 6379}, "periodSeconds": 1}}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "redis", "namespace": ns},
         "spec": {"selector": {"app": "redis"}, "ports": [{"port": 6379}]}},
    ]  # fmt: skip


def redis_ping(host: str, timeout: float = 30) -> bytes:
    """PING, retried while redis starts listening and kube-proxy programs a new Service."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, 6379), timeout=5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_a_restricted_pod_runs_and_is_reachable(
    node_cluster: LocalControlPlane, built_images: dict[str, str]
) -> None:
    plane = node_cluster
    ns = restricted_namespace(plane)
    apply(plane, *redis_pod(ns, built_images["redis"]))
    kubectl(plane, "-n", ns, "wait", "--for=condition=Ready", "pod/redis", "--timeout=120s")
    pod_ip = kubectl(plane, "-n", ns, "get", "pod", "redis", "-o", "jsonpath={.status.podIP}")
    cluster_ip = kubectl(plane, "-n", ns, "get", "svc", "redis", "-o", "jsonpath={.spec.clusterIP}")
    try:
        assert redis_ping(pod_ip) == b"+PONG\r\n"
        assert redis_ping(cluster_ip) == b"+PONG\r\n"
    except OSError as e:
        route = ["ip", "route", "get", pod_ip]
        routes = subprocess.run(route, capture_output=True, text=True, check=False)
        pods = kubectl(plane, "get", "pods", "-A", "-o", "wide")
        pytest.fail(f"{e}: pod {pod_ip}, service {cluster_ip}\n{routes.stdout}\n{pods}")
    # Inside the pod: cluster DNS names, and the API server through the `kubernetes` Service.
    script = (
        f"import socket; print(socket.gethostbyname('redis.{ns}.svc.cluster.local'));"
        "socket.create_connection(('kubernetes.default.svc.cluster.local', 443), 5)"
    )
    out = kubectl(plane, "-n", ns, "exec", "redis", "--", "python3", "-c", script)
    assert out.strip() == cluster_ip
    # `kubectl logs` goes through the kubelet with the API server's client certificate.
    assert "Ready to accept connections" in kubectl(plane, "-n", ns, "logs", "redis")


def _post(url: str, body: dict[str, Any], timeout: float = 10) -> tuple[int, dict[str, Any]]:
    headers = {"content-type": "application/json", "connection": "close"}
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 - the cluster's
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - the cluster's IPs
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


# --- the chain: chart, Redis with a password, a SQL registry, FeatureView, Model -----------------
STACK = Stack()
TENANT, SYSTEM, SECRET = STACK.tenant, STACK.system, STACK.secret
REDIS_PASSWORD = f"redis-{secrets.token_hex(12)}"  # new each run: the grep below looks for it
PG_PASSWORD = f"pg-{secrets.token_hex(12)}"
REQUEST = json.loads((REPO / "examples/fraud/request.json").read_text())
# examples/fraud/candidates.py: challengers with the champion's signature.
CHALLENGERS = ("candidate.onnx", "slow.onnx", "erroring.onnx", "shifted.onnx")


@dataclass
class Chain:
    plane: LocalControlPlane
    offline: Path  # the host folder behind the `offline-data` volume (parquet, ONNX files)
    registry: PostgresServer
    # Debian's Prometheus on the bridge address (the operator's pod queries it), finding the
    # tenant's pods through the API server (tests/prometheus.py: PodDiscoveryBridge).
    prometheus: PrometheusServer

    def get(self, kind: str, name: str, ns: str = TENANT) -> dict[str, Any]:
        got: dict[str, Any] = json.loads(
            kubectl(self.plane, "-n", ns, "get", kind, name, "-o", "json")
        )
        return got

    def model_pods(self, name: str) -> list[dict[str, Any]]:
        out = kubectl(self.plane, "-n", TENANT, "get", "pods", "-l", f"rtml.dev/model={name}",
                      "-o", "json")  # fmt: skip
        return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]

    def service_url(self, name: str) -> str:
        svc = self.get("svc", name)
        return f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}"

    def operator_logs(self) -> str:
        return kubectl(self.plane, "-n", SYSTEM, "logs", "deploy/rtml-operator", "--tail=-1")

    def wait(self, what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
        """wait_until, failing with what the cluster shows: statuses, pods, the operator's log."""
        try:
            return wait_until(what, check, timeout, every)
        except pytest.fail.Exception as e:
            shown = kubectl(self.plane, "-n", TENANT, "get", "rmodel,rfv,pods,jobs", "-o", "wide")
            path = "jsonpath={range .items[*]}{.metadata.name}: {.status}{'\\n'}{end}"
            statuses = kubectl(self.plane, "-n", TENANT, "get", "rmodel,rfv", "-o", path)
            log = "\n".join(self.operator_logs().splitlines()[-25:])
            pytest.fail(f"{e}\n{shown}\n{statuses}\n--- operator log ---\n{log}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_until(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    """tests.kube.wait_for, with the arguments in the order these tests read best."""
    return wait_for(check, timeout, every, what)


def redis_command(host: str, *words: str) -> bytes:
    """One RESP exchange with the in-cluster Redis (AUTH first), from the host."""
    with socket.create_connection((host, 6379), timeout=5) as s:
        for cmd in (("AUTH", REDIS_PASSWORD), words):
            s.sendall(b"".join([f"*{len(cmd)}\r\n".encode()]
                               + [f"${len(w)}\r\n{w}\r\n".encode() for w in cmd]))  # fmt: skip
            reply = s.recv(4096)
        return reply


@pytest.fixture(scope="module")
def chain(
    node_cluster: LocalControlPlane,
    built_images: dict[str, str],
    fraud_build: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Chain]:
    """What `rtml demo` sets up (rtml.dev.stack): the chart (local images) with a Redis behind a
    password and a PostgreSQL registry, both credentials in a Secret; the offline data and the
    artifacts on a volume, served inside the cluster."""
    plane = node_cluster
    offline = tmp_path_factory.mktemp("offline")
    offline.chmod(0o755)  # the pods run as 65532
    files = ("features.parquet", "model.onnx", "backup.onnx", *CHALLENGERS)
    for name in files:
        shutil.copy(fraud_build / name, offline / name)
        (offline / name).chmod(0o644)
    registry = PostgresServer(Path(tempfile.mkdtemp(prefix="rtml-node-pg-")),
                              listen=("127.0.0.1", BRIDGE_IP))  # fmt: skip
    registry.init()
    registry.start()
    registry.create_database("feast")
    registry.allow_with_password(POD_CIDR, PG_PASSWORD)
    registry_url = f"postgresql+psycopg://rtml:{PG_PASSWORD}@{BRIDGE_IP}:{registry.port}/feast"
    api = kubernetes.config.new_client_from_config(config_file=str(plane.kubeconfig))
    bridge = PodDiscoveryBridge(api_pod_lister(api, [TENANT]))
    prometheus = PrometheusServer(tmp_path_factory.mktemp("prometheus"),
                                  [http_pod_scrape_config("rtml-pods", bridge.url)],
                                  host=BRIDGE_IP)  # fmt: skip
    try:
        apply(plane, *STACK.manifests(redis_password=REDIS_PASSWORD, registry_url=registry_url,
                                      offline=offline, images=built_images))  # fmt: skip
        prometheus.start()
        values = offline.parent / "values.yaml"
        values.write_text(yaml.safe_dump({
            **STACK.chart_values(), "prometheusUrl": prometheus.url, "experimentTickSeconds": 2,
            "autoscaling": {"scaleDownStabilizationSeconds": 30}}))  # fmt: skip
        helm = ensure_tools(lambda _m: None) / "helm"
        try:
            helm_install(helm, plane.bin_dir / "kubectl", plane.kubeconfig, CHART, values, SYSTEM)
        except DevError as e:
            pytest.fail(str(e))
        for pod in ("redis", "models"):
            kubectl(plane, "-n", TENANT, "wait", "--for=condition=Ready", f"pod/{pod}",
                    "--timeout=180s")  # fmt: skip
        yield Chain(plane, offline, registry, prometheus)
    finally:
        prometheus.stop()
        bridge.close()
        api.close()
        registry.stop()
        shutil.rmtree(registry.workdir, ignore_errors=True)


@pytest.mark.timeout(1500)  # the first test also brings the cluster up and installs the chart
def test_the_charts_operator_pod_is_ready_with_its_own_service_account(chain: Chain) -> None:
    (pod,) = json.loads(kubectl(chain.plane, "-n", SYSTEM, "get", "pods", "-o", "json"))["items"]
    assert pod["status"]["containerStatuses"][0]["ready"] is True
    account = pod["spec"]["serviceAccountName"]
    assert account == "rtml-operator"  # the chart's, bound to its ClusterRole
    env = {e["name"] for e in pod["spec"]["containers"][0].get("env", [])}
    assert "KUBECONFIG" not in env  # the in-cluster token alone: no admin kubeconfig
    # What the chart's RBAC allows that account, and what it does not.
    who = f"--as=system:serviceaccount:{SYSTEM}:{account}"
    can = kubectl(chain.plane, "auth", "can-i", "patch", "models.rtml.dev", "--subresource=status",
                  who, "-A")  # fmt: skip
    assert can.strip() == "yes"
    denied = subprocess.run(
        [str(chain.plane.bin_dir / "kubectl"), f"--kubeconfig={chain.plane.kubeconfig}",
         "auth", "can-i", "get", "secrets", who, "-A"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert denied.stdout.strip() == "no"


def fraud_docs(artifact: str, digest: str, name: str = "fraud", version: str = "v1") -> list[Any]:
    view, model = STACK.fraud(REPO / "examples/fraud/model.yaml", artifact, digest, version=version)
    model["metadata"]["name"] = name
    return [view, model]


def test_the_materialization_job_runs_as_a_pod_into_the_clusters_redis(chain: Chain) -> None:
    view, _ = fraud_docs("model.onnx", sha256(chain.offline / "model.onnx"))
    apply(chain.plane, view)
    chain.wait("the FeatureView to be Registered", lambda: condition(
        chain.get("rfv", "card-features"), "Registered").get("status") == "True", 180)  # fmt: skip
    redis_ip = chain.get("pod", "redis")["status"]["podIP"]
    assert redis_command(redis_ip, "DBSIZE") == b":0\r\n"
    started = datetime.now(UTC)
    # "Now": the annotation, on which the operator makes a Job from the CronJob's jobTemplate.
    kubectl(chain.plane, "-n", TENANT, "annotate", "rfv", "card-features", "--overwrite",
            f"rtml.dev/materialize-now={started.timestamp():.0f}")  # fmt: skip

    def the_job() -> str | None:
        jobs = json.loads(kubectl(chain.plane, "-n", TENANT, "get", "jobs", "-o", "json"))
        names = [j["metadata"]["name"] for j in jobs["items"]]
        return next((n for n in names if n.startswith("card-features-materialize-now-")), None)

    job = chain.wait("the operator to make the Job", the_job, 60)
    done = subprocess.run(
        [str(chain.plane.bin_dir / "kubectl"), f"--kubeconfig={chain.plane.kubeconfig}", "-n",
         TENANT, "wait", "--for=condition=Complete", f"job/{job}", "--timeout=300s"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    logs = kubectl(chain.plane, "-n", TENANT, "logs", f"job/{job}", "--tail=30")
    assert done.returncode == 0, f"{done.stderr}\n{logs}"
    # A pod under `restricted` ran it, with the CronJob's command and the Secret's credentials.
    (pod,) = json.loads(kubectl(chain.plane, "-n", TENANT, "get", "pods", "-l",
                                f"job-name={job}", "-o", "json"))["items"]  # fmt: skip
    assert pod["status"]["phase"] == "Succeeded"
    command = pod["spec"]["containers"][0]["command"]
    assert command == ["rtml", "materialize", "card-features", "--namespace", TENANT]
    cards = pd.read_parquet(chain.offline / "features.parquet", columns=["card_id"])["card_id"]
    assert redis_command(redis_ip, "DBSIZE") == f":{cards.nunique()}\r\n".encode()
    # The resync reads the run from the registry: Materialized=True with its real end time.
    fv = chain.wait("Materialized=True", lambda: (
        (f := chain.get("rfv", "card-features"))
        and condition(f, "Materialized").get("status") == "True" and f), 120)  # fmt: skip
    end = datetime.fromisoformat(fv["status"]["lastMaterialization"].replace("Z", "+00:00"))
    assert started - timedelta(seconds=2) <= end <= datetime.now(UTC), end


def wait_ready(chain: Chain, name: str, timeout: float = 300) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        m = chain.get("rmodel", name)
        return m if (m.get("status") or {}).get("phase") == "Ready" else None

    try:
        return wait_until(f"Model {name} to be Ready", ready, timeout, every=2)  # type: ignore[no-any-return]
    except pytest.fail.Exception:
        status = chain.get("rmodel", name).get("status")
        pods = kubectl(chain.plane, "-n", TENANT, "get", "pods", "-o", "wide")
        logs = kubectl(chain.plane, "-n", SYSTEM, "logs", "deploy/rtml-operator", "--tail=30")
        pytest.fail(f"Model {name} not Ready: {status}\n{pods}\n{logs}")


def test_a_model_reads_its_features_from_redis_through_its_service(chain: Chain) -> None:
    apply(chain.plane, *fraud_docs("model.onnx", sha256(chain.offline / "model.onnx")))
    status = wait_ready(chain, "fraud")["status"]
    assert status["readyReplicas"] == 1
    assert status["activeVersion"] == "v1"
    (pod,) = chain.model_pods("fraud")
    started = {c["name"]: c["started"] for c in pod["status"]["containerStatuses"]}
    assert started == {"runtime": True}  # through its startup probe
    url = chain.service_url("fraud")
    code, body = _post(f"{url}/predict", REQUEST)
    assert code == 200, body
    if body["degraded"]:
        logs = kubectl(chain.plane, "-n", TENANT, "logs", "deploy/fraud", "--tail=30")
        env = kubectl(chain.plane, "-n", TENANT, "get", "deploy", "fraud", "-o",
                      "jsonpath={.spec.template.spec.containers[0].env}")  # fmt: skip
        model = chain.get("rmodel", "fraud")
        pytest.fail(f"degraded: {body}\n{logs}\nenv: {env}\n{model}")
    assert body["version"] == "v1"  # and not degraded: the card's row came from Redis
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:  # noqa: S310 - ClusterIP
        metrics = r.read().decode()
    ok = [line for line in metrics.splitlines()
          if line.startswith("rtml_requests_total{") and 'outcome="ok"' in line]  # fmt: skip
    assert ok, metrics[:2000]
    assert float(ok[0].split()[-1]) >= 1
    reads = [line for line in metrics.splitlines()
             if line.startswith("rtml_feature_read_duration_seconds_count")]  # fmt: skip
    assert reads
    assert float(reads[0].split()[-1]) >= 1


def test_the_redis_password_is_nowhere_but_in_its_secret(chain: Chain) -> None:
    plane = chain.plane
    places = {
        "configmaps": kubectl(plane, "get", "configmaps", "-A", "-o", "json"),
        "pods": kubectl(plane, "get", "pods", "-A", "-o", "json"),
        "deployments": kubectl(plane, "get", "deployments", "-A", "-o", "json"),
        "cronjobs": kubectl(plane, "get", "cronjobs,jobs", "-A", "-o", "json"),
        "models": kubectl(plane, "get", "rmodel,rfv", "-A", "-o", "json"),
        "events": kubectl(plane, "get", "events", "-A", "-o", "json"),
        "operator log": chain.operator_logs(),
        "runtime log": kubectl(plane, "-n", TENANT, "logs", "deploy/fraud", "--tail=-1"),
    }
    for secret in (REDIS_PASSWORD, PG_PASSWORD):
        leaks = [where for where, text in places.items() if secret in text]
        assert leaks == [], f"a credential appears in {leaks}"
    # ... while every pod that needs it gets it by reference.
    pod = json.loads(places["pods"])["items"]
    runtime = next(p for p in pod if p["metadata"].get("labels", {}).get("rtml.dev/model"))
    env = {e["name"]: e for e in runtime["spec"]["containers"][0]["env"]}
    assert env["RTML_FEAST_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == SECRET


class Load:
    """Steady open-loop traffic: `rate` requests a second, each on a new connection."""

    def __init__(self, url: str, rate: float) -> None:
        self.url, self.rate = url, rate
        self.results: list[tuple[float, int, str]] = []  # (time, status, version or error)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(16)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self) -> None:
        try:
            code, body = _post(f"{self.url}/predict", REQUEST, timeout=5)
            self.results.append((time.monotonic(), code, str(body.get("version", body))))
        except OSError as e:
            self.results.append((time.monotonic(), 0, f"{type(e).__name__}: {e}"))

    def _run(self) -> None:
        start = time.monotonic()
        n = 0
        while not self._stop.is_set():
            self._pool.submit(self._one)
            n += 1
            self._stop.wait(max(0.0, start + n / self.rate - time.monotonic()))

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)
        self.seconds = time.monotonic() - self.started


def test_spec_stream_runs_consumer_pods_that_score_events_into_the_output_stream(
    chain: Chain,
) -> None:
    """spec.stream: the operator's MODEL-stream Deployment runs `rtml stream` as a pod, which
    joins its group on the in-cluster Redis (password by secretKeyRef), reads the card's
    features and publishes each event's result; removing spec.stream prunes it."""
    view, model = fraud_docs("model.onnx", sha256(chain.offline / "model.onnx"), name="streamed")
    model["spec"]["stream"] = {"output": "streamed:results"}
    model["spec"]["runtime"] = {"resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                              "limits": {"memory": "1Gi"}}}  # fmt: skip
    apply(chain.plane, view, model)
    wait_ready(chain, "streamed")
    redis_ip = chain.get("pod", "redis")["status"]["podIP"]
    client = redis.Redis(host=redis_ip, port=6379, password=REDIS_PASSWORD, socket_timeout=5)
    event = {"event_id": "node-1", "card_id": REQUEST["entity_id"],
             "event_time": f"{time.time():.3f}", **REQUEST["features"]}  # fmt: skip
    client.xadd("rtml:streamed:events", event)  # type: ignore[arg-type]

    def published() -> list[Any] | None:
        return client.xrange("streamed:results", "-", "+") or None

    try:
        entries = chain.wait("a result in streamed:results", published, 240, every=2)
    except pytest.fail.Exception as e:
        logs = kubectl(chain.plane, "-n", TENANT, "logs", "deploy/streamed-stream", "--tail=40")
        pytest.fail(f"{e}\n--- stream pod log ---\n{logs}")
    (pod,) = [p for p in chain.model_pods("streamed")
              if p["metadata"]["labels"]["app.kubernetes.io/component"] == "stream"]  # fmt: skip
    assert pod["status"]["phase"] == "Running"
    ((_, fields),) = entries
    result = {k.decode(): v.decode() for k, v in fields.items()}
    assert (result["event_id"], result["model"]) == ("node-1", "streamed"), result
    assert result["degraded"] == "false", result  # the card's row came from the cluster's Redis
    assert 0.0 <= float(result["score"]) <= 1.0
    pending = client.xpending("rtml:streamed:events", "rtml-streamed")
    assert pending["pending"] == 0  # acknowledged after publishing

    def stream_ready() -> dict[str, Any] | None:
        cond = condition(chain.get("rmodel", "streamed"), "StreamReady")
        return cond if cond.get("status") == "True" else None

    cond = chain.wait("the Model's StreamReady condition", stream_ready, 60)
    assert (cond["reason"], cond["message"]) == (
        "ConsumersAvailable", "1 of 1 stream consumers available"), cond  # fmt: skip
    del model["spec"]["stream"]
    apply(chain.plane, model)
    gone = lambda: not _exists(chain, "deploy", "streamed-stream")  # noqa: E731
    chain.wait("streamed-stream to be pruned", gone, 120)
    no_stream = lambda: not condition(chain.get("rmodel", "streamed"), "StreamReady")  # noqa: E731
    chain.wait("StreamReady to go with spec.stream", no_stream, 60)
    retire(chain, "streamed")


def test_a_new_artifact_rolls_out_under_load_without_a_failed_request(chain: Chain) -> None:
    url = chain.service_url("fraud")
    phases: list[tuple[str, str, int | None]] = []
    seen: list[tuple[float, str, str, int | None]] = []  # the same, with when, for a failure
    programming_before = endpoint_programming(chain.plane)
    with Load(url, rate=60) as load:
        time.sleep(5)
        applied = time.monotonic()
        apply(chain.plane, fraud_docs("backup.onnx", sha256(chain.offline / "backup.onnx"),
                                      version="v2")[1])  # fmt: skip

        def rolled() -> bool:
            st = chain.get("rmodel", "fraud").get("status") or {}
            rolled_out = condition({"status": st}, "RolledOut").get("status", "")
            phases.append((st.get("phase", ""), rolled_out, st.get("readyReplicas")))
            seen.append((time.monotonic(), *phases[-1]))
            return st.get("phase") == "Ready" and st.get("activeVersion") == "v2"

        chain.wait("the rollout of v2", rolled, 300)
        chain.wait("the old pod to go", lambda: len(chain.model_pods("fraud")) == 1, 120)
        time.sleep(5)
    failed = [r for r in load.results if r[1] != 200]
    versions = [r[2] for r in load.results if r[1] == 200]
    stats = {"requests": len(load.results), "seconds": round(load.seconds, 1),
             "failed": len(failed), "v1": versions.count("v1"), "v2": versions.count("v2"),
             "model_phases": phases}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rollout-under-load.json").write_text(json.dumps(stats))
    if failed:  # placed in time beside what the cluster and kube-proxy recorded
        programming = endpoint_programming(chain.plane)
        report = [f"{len(failed)} of {len(load.results)} failed:"]
        report += [f"  {what} (status {code}) at {at - applied:+.2f} s from the apply"
                   for at, code, what in failed[:10]]  # fmt: skip
        report += [f"  model {p} RolledOut={r} ready={n} at {at - applied:+.1f} s"
                   for at, p, r, n in seen]  # fmt: skip
        report.append(
            "  endpoint changes in kube-proxy during the test: "
            f"{programming['changes'] - programming_before['changes']}"
            f" (over the preStop sleep, ever: {programming['over_prestop_sleep']};"
            f" slowest ever within {programming['slowest_within_s']} s)"
        )
        events = kubectl(chain.plane, "-n", TENANT, "get", "events", "--sort-by=.lastTimestamp")
        report += ["events:", *[f"  {e}" for e in events.splitlines() if "fraud" in e][-30:]]
        pytest.fail("\n".join(report))
    assert len(load.results) / load.seconds >= 50, (len(load.results), load.seconds)
    assert (versions[0], versions[-1]) == ("v1", "v2")
    # The Model followed the real Deployment: rolling out, then rolled out with its ready pod.
    assert ("Progressing", "False") in {(p, r) for p, r, _ in phases}, phases
    deploy = chain.get("deployment", "fraud")
    status = chain.get("rmodel", "fraud")["status"]
    assert status["readyReplicas"] == deploy["status"]["readyReplicas"] == 1
    assert condition({"status": status}, "RolledOut")["status"] == "True"


def watch_phases(chain: Chain, name: str, until: Callable[[list[str]], bool], timeout: float
                 ) -> list[str]:  # fmt: skip
    seen: list[str] = []

    def check() -> bool:
        phase = (chain.get("rmodel", name).get("status") or {}).get("phase", "")
        if not seen or seen[-1] != phase:
            seen.append(phase)
        return until(seen)

    try:
        wait_until(f"phases of {name}", check, timeout, every=0.3)
    except pytest.fail.Exception:
        pytest.fail(f"Model {name} went through {seen}")
    return seen


def test_a_deleted_pod_is_replaced_and_the_model_degrades_then_recovers(chain: Chain) -> None:
    (pod,) = chain.model_pods("fraud")
    kubectl(chain.plane, "-n", TENANT, "delete", "pod", pod["metadata"]["name"], "--wait=false")
    seen = watch_phases(chain, "fraud", lambda s: "Degraded" in s and s[-1] == "Ready", 240)
    assert seen.index("Degraded") < len(seen) - 1, seen
    (new,) = chain.model_pods("fraud")
    assert new["metadata"]["name"] != pod["metadata"]["name"]


def container_pids(pod_uid: str) -> list[int]:
    """Host PIDs of the pod's processes other than its sandbox (pause), by their cgroup."""
    marker = f"pod{pod_uid}"
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker not in (proc / "cgroup").read_text():
                continue
            if (proc / "cmdline").read_bytes().split(b"\0")[0].endswith(b"pause"):
                continue
        except OSError:
            continue
        pids.append(int(proc.name))
    return pids


def test_a_stopped_runtime_is_restarted_by_its_liveness_probe(chain: Chain) -> None:
    (pod,) = chain.model_pods("fraud")
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    pids = container_pids(pod["metadata"]["uid"])
    assert pids, "no runtime process found on the host"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)

    def restarted() -> dict[str, Any] | None:
        p = chain.get("pod", pod["metadata"]["name"])
        (c,) = p["status"]["containerStatuses"]
        return p if c["restartCount"] > restarts and c["ready"] else None

    try:
        p = chain.wait("liveness to restart the container", restarted, 240, every=2)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    events = kubectl(chain.plane, "-n", TENANT, "get", "events", "--field-selector",
                     f"involvedObject.name={pod['metadata']['name']}")  # fmt: skip
    assert "Liveness probe failed" in events, events
    assert p["status"]["containerStatuses"][0]["lastState"]["terminated"]
    url = f"{chain.service_url('fraud')}/predict"

    def answered() -> tuple[int, dict[str, Any]] | None:
        # The pod is Ready before its EndpointSlice and kube-proxy's rules say so: until they
        # do, the ClusterIP refuses the connection (CI saw that once).
        try:
            return _post(url, REQUEST)
        except OSError:
            return None

    code, body = chain.wait("the Service to answer from the restarted pod", answered, 60)
    assert code == 200, body


def test_an_artifact_changed_behind_its_digest_never_becomes_ready(chain: Chain) -> None:
    """The bytes at the artifact's URL change after the operator checked them (an overwritten
    file on the server): the new pod refuses them, never becomes Ready, and the Model says why."""
    shutil.copy(chain.offline / "model.onnx", chain.offline / "tampered.onnx")
    (chain.offline / "tampered.onnx").chmod(0o644)
    _, model = fraud_docs("tampered.onnx", sha256(chain.offline / "model.onnx"), name="tampered")
    apply(chain.plane, model)
    wait_ready(chain, "tampered")
    shutil.copy(chain.offline / "backup.onnx", chain.offline / "tampered.onnx")
    (old,) = chain.model_pods("tampered")
    kubectl(chain.plane, "-n", TENANT, "delete", "pod", old["metadata"]["name"], "--wait=false")

    ready_pods: list[str] = []

    def explained() -> dict[str, Any] | None:
        for pod in chain.model_pods("tampered"):
            if any(c["ready"] for c in pod["status"].get("containerStatuses", [])):
                ready_pods.append(pod["metadata"]["name"])
        m = chain.get("rmodel", "tampered")
        return m if "spec.artifact.sha256" in condition(m, "Ready").get("message", "") else None

    m = chain.wait("the Model to say why", explained, 240, every=2)
    assert set(ready_pods) <= {old["metadata"]["name"]}, ready_pods  # no new pod was ever Ready
    ready = condition(m, "Ready")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "changed-artifact.json").write_text(json.dumps({"phase": m["status"]["phase"],
                                                            "ready": ready}))  # fmt: skip
    assert ready["status"] == "False"
    assert sha256(chain.offline / "backup.onnx") in ready["message"]  # the digest it found
    assert m["status"]["phase"] in ("Degraded", "Failed")
    time.sleep(20)  # and it stays so: restarts fetch the same wrong bytes
    for pod in chain.model_pods("tampered"):
        assert not any(c["ready"] for c in pod["status"].get("containerStatuses", []))
    # Left running, its pod restarts every ~2.5 minutes (the startup probe gives up) and each
    # start takes a core for seconds, under the latency-gated tests that follow.
    retire(chain, "tampered")


def retire(chain: Chain, *models: str) -> None:
    """Delete Models an earlier test made and no later one needs, and wait for their pods to
    go: the node has two cores, and the tests after this measure latency on them."""
    for name in models:
        kubectl(chain.plane, "-n", TENANT, "delete", "rmodel", name, "--ignore-not-found")
    chain.wait(
        f"the pods of {', '.join(models)} to go",
        lambda: not any(chain.model_pods(name) for name in models),
        120,
    )


# --- Experiments: canaries judged on live metrics from a real Prometheus ----------------------
# Gates: 2% errors and a 0.1 shift of the mean score everywhere. The p99 gate is the Model's
# 50 ms SLO only where latency is what a test is about (the slow candidate takes ~50 ms a row
# on its own, the others ~0.1 ms). Elsewhere it is 1,000 ms: only a broken candidate exceeds
# that. The first step's window holds ~75 candidate requests, so its p99 is their maximum, and
# one scheduling stall of the contended two-core node decides it: CI once measured a 0.1 ms
# candidate's p99 over 50 ms and rolled it back on latency. Speed is measured in benchmarks/.
SLO_GATES = [{"name": "p99LatencyMs", "max": 50}, {"name": "errorRate", "max": 0.02},
             {"name": "scoreMeanShift", "max": 0.1}]  # fmt: skip
GATES = [{**g, "max": 1000} if g["name"] == "p99LatencyMs" else g for g in SLO_GATES]
STEPS = {"steps": [20, 50, 100], "stepInterval": "15s"}
ANALYSIS = {"metrics": GATES, "minRequests": 20}
CARDS = [f"card_{i:05d}" for i in range(5000)]


class EntityLoad(Load):
    """Open-loop traffic over many cards, so the sticky split has entities to split; records
    (time, status, version or error, variant)."""

    def __init__(self, url: str, rate: float) -> None:
        super().__init__(url, rate)
        self.variants: list[tuple[float, int, str, str]] = []
        self._n = 0

    def _one(self) -> None:
        self._n += 1
        body = {**REQUEST, "entity_id": CARDS[(self._n * 7919) % len(CARDS)]}
        try:
            code, out = _post(f"{self.url}/predict", body, timeout=5)
            self.results.append((time.monotonic(), code, str(out.get("version", out))))
            self.variants.append((time.monotonic(), code, str(out.get("version")),
                                  str(out.get("variant"))))  # fmt: skip
        except OSError as e:
            self.results.append((time.monotonic(), 0, f"{type(e).__name__}: {e}"))

    def failed(self) -> list[tuple[float, int, str]]:
        return [r for r in self.results if r[1] != 200]


def scorer_model(chain: Chain, artifact: str, version: str) -> dict[str, Any]:
    """A Model rolled out by canary: a new artifact runs as an Experiment the Model owns."""
    _, model = fraud_docs(artifact, sha256(chain.offline / artifact), name="scorer",
                          version=version)  # fmt: skip
    model["spec"]["rollout"] = {"strategy": "canary", **STEPS, "analysis": ANALYSIS}
    return model  # type: ignore[no-any-return]


def experiment(chain: Chain, name: str, artifact: str, version: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": TENANT},
        "spec": {
            "modelRef": "scorer",
            "candidate": {"version": version, "artifact": {
                "uri": f"{STACK.artifacts_url}/{artifact}",
                "sha256": sha256(chain.offline / artifact)}},
            "strategy": "canary",
            "canary": STEPS,
            "analysis": ANALYSIS,
            **spec,
        },
    }  # fmt: skip


def phase_of(chain: Chain, name: str) -> dict[str, Any]:
    return chain.get("rexp", name).get("status") or {}


def wait_phase(chain: Chain, name: str, phases: tuple[str, ...], timeout: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        st = phase_of(chain, name)
        return st if st.get("phase") in phases else None

    try:
        return wait_until(f"Experiment {name} to reach {phases}", done, timeout, every=1)  # type: ignore[no-any-return]
    except pytest.fail.Exception:
        st = phase_of(chain, name)
        events = kubectl(chain.plane, "-n", TENANT, "get", "events", "--field-selector",
                         f"involvedObject.name={name}", "-o",
                         "custom-columns=R:.reason,M:.message")  # fmt: skip
        log = "\n".join(chain.operator_logs().splitlines()[-30:])
        pytest.fail(f"Experiment {name}: {st}\n{events}\n--- operator log ---\n{log}")


def events_of(chain: Chain, name: str) -> list[tuple[str, str]]:
    out = json.loads(kubectl(chain.plane, "-n", TENANT, "get", "events", "--field-selector",
                             f"involvedObject.name={name}", "-o", "json"))  # fmt: skip
    items = sorted(out["items"], key=lambda e: e.get("firstTimestamp") or "")
    return [(e["reason"], e["message"]) for e in items]


def server_side_apply(chain: Chain, doc: dict[str, Any], manager: str = "argocd-controller") -> str:
    """As Argo CD applies: server-side, its own field manager; the dry-run diff must be empty."""
    text = yaml.safe_dump(doc)
    # `kubectl diff` reads the live object, then dry-runs the apply: two reads, not one. A write
    # between them by anyone (Kopf's diff-base annotation, the Model's status) shows as a
    # difference the re-apply does not make. Drift that the apply would cause stays in every
    # try; a write that raced the first read does not.
    for _ in range(5):
        diff = subprocess.run(
            [str(chain.plane.bin_dir / "kubectl"), f"--kubeconfig={chain.plane.kubeconfig}",
             "diff", "--server-side", f"--field-manager={manager}", "-f", "-"],
            input=text, capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        assert diff.returncode in (0, 1), diff.stderr
        if not diff.stdout:
            break
        time.sleep(1)
    kubectl(chain.plane, "apply", "--server-side", f"--field-manager={manager}", "-f", "-",
            stdin=text)  # fmt: skip
    return diff.stdout


def spec_managers(chain: Chain, name: str) -> dict[str, list[str]]:
    """Which field manager owns which top-level field of the Model's spec."""
    model = json.loads(kubectl(chain.plane, "-n", TENANT, "get", "rmodel", name, "-o", "json",
                               "--show-managed-fields"))  # fmt: skip
    owned: dict[str, list[str]] = {}
    for entry in model["metadata"].get("managedFields", []):
        spec = (entry.get("fieldsV1") or {}).get("f:spec") or {}
        owned[entry["manager"]] = sorted(k for k in spec if k.startswith("f:"))
    return owned


@pytest.mark.timeout(900)
def test_a_canary_rollout_promotes_a_good_candidate_through_every_step(chain: Chain) -> None:
    """spec.rollout.strategy canary: the new artifact runs as an owned Experiment under load,
    step by step on live metrics, while GitOps re-applies the Model with no conflict."""
    retire(chain, "fraud", "tampered")  # the experiments' gates are latencies on two cores
    v1 = scorer_model(chain, "model.onnx", "v1")
    server_side_apply(chain, v1)
    wait_ready(chain, "scorer")
    url = chain.service_url("scorer")
    v2 = scorer_model(chain, "candidate.onnx", "v2")
    steps_seen: list[tuple[str, int | None, int | None]] = []
    during: list[tuple[str, dict[str, Any]]] = []  # (diff of a GitOps re-apply, Model status)
    reached: dict[int, float] = {}  # step -> seconds from writing its weight to every pod on it
    with EntityLoad(url, rate=25) as load:
        time.sleep(3)
        server_side_apply(chain, v2)
        before = server_side_apply(chain, v2)  # again, before the canary has started

        def promoted() -> bool:
            st = phase_of(chain, "scorer-v2") if _exists(chain, "rexp", "scorer-v2") else {}
            seen = (st.get("phase", ""), st.get("currentStep"), st.get("candidateWeight"))
            if st.get("windowStart") and st.get("stepStartedAt"):
                reached[st["currentStep"]] = (
                    datetime.fromisoformat(st["windowStart"])
                    - datetime.fromisoformat(st["stepStartedAt"])
                ).total_seconds()
            if not steps_seen or steps_seen[-1] != seen:
                steps_seen.append(seen)
                if seen[0] == "Progressing" and seen[1] == 1 and not during:
                    diff = server_side_apply(chain, v2)  # during the canary
                    during.append((diff, chain.get("rmodel", "scorer")["status"]))
            return seen[0] in ("Promoted", "RolledBack", "Aborted")

        chain.wait("the canary of v2 to end", promoted, 480, every=1)
        chain.wait("v2 to be the active version",
                   lambda: chain.get("rmodel", "scorer")["status"].get("activeVersion") == "v2",
                   300)  # fmt: skip
        time.sleep(3)
    assert before == "", before
    assert during, steps_seen
    assert during[0][0] == "", during[0][0]
    assert (during[0][1]["activeVersion"], during[0][1].get("experiment")) == ("v1", "scorer-v2")
    status = phase_of(chain, "scorer-v2")
    RESULTS.mkdir(parents=True, exist_ok=True)
    split = [v for v in load.variants if v[1] == 200]
    (RESULTS / "canary-promoted.json").write_text(json.dumps({
        "steps": steps_seen, "analysis": status.get("analysis"), "requests": len(load.results),
        "failed": len(load.failed()), "candidate": sum(v[3] == "candidate" for v in split),
        "weight_reached_seconds": reached,
        "seconds": round(load.seconds, 1)}))  # fmt: skip
    assert status["phase"] == "Promoted", (status, steps_seen)
    weights = [w for p, _, w in steps_seen if p == "Progressing"]
    assert [w for i, w in enumerate(weights) if i == 0 or w != weights[i - 1]] == [20, 50, 100]
    passed = {(r["metric"], r["passed"]) for r in status["analysis"]}
    assert passed == {("p99LatencyMs", True), ("errorRate", True), ("scoreMeanShift", True)}
    assert load.failed() == [], load.failed()[:5]
    assert any(v[3] == "candidate" and v[2] == "v2" for v in split)
    reasons = [r for r, _ in events_of(chain, "scorer-v2")]
    assert reasons[:1] == ["Started"], reasons
    assert reasons.count("StepPassed") == 2, reasons
    assert "Promoted" in reasons
    # After: GitOps applies the same manifest again, nothing changes, the operator owns no spec.
    assert server_side_apply(chain, v2) == ""
    owners = spec_managers(chain, "scorer")
    assert owners.get("rtml-operator", []) == [], owners
    model = chain.get("rmodel", "scorer")
    assert model["spec"]["version"] == "v2"
    assert model["metadata"]["generation"] == 2  # v1, then v2: no writes of ours in between
    assert model["status"]["activeArtifact"]["uri"].endswith("/candidate.onnx")


def _exists(chain: Chain, kind: str, name: str) -> bool:
    out = subprocess.run(
        [str(chain.plane.bin_dir / "kubectl"), f"--kubeconfig={chain.plane.kubeconfig}", "-n",
         TENANT, "get", kind, name, "-o", "name"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return out.returncode == 0


@pytest.mark.parametrize(
    ("artifact", "metric"),
    [("slow.onnx", "p99LatencyMs"), ("erroring.onnx", "errorRate"),
     ("shifted.onnx", "scoreMeanShift")],
)  # fmt: skip
@pytest.mark.timeout(600)
def test_a_bad_candidate_is_rolled_back_at_the_first_step_on_its_gate(
    chain: Chain, artifact: str, metric: str
) -> None:
    name = f"try-{artifact.split('.', maxsplit=1)[0]}"
    url = chain.service_url("scorer")
    with EntityLoad(url, rate=25) as load:
        version = f"v-{artifact.split('.', maxsplit=1)[0]}"
        gates = SLO_GATES if metric == "p99LatencyMs" else GATES
        apply(chain.plane, experiment(chain, name, artifact, version,
                                      analysis={**ANALYSIS, "metrics": gates}))  # fmt: skip
        status = wait_phase(chain, name, ("RolledBack", "Promoted", "Completed"), 300)
        time.sleep(3)
    assert status["phase"] == "RolledBack", status
    assert status["currentStep"] == 0  # the first step already failed
    failed = {r["metric"]: r for r in status["analysis"] if not r["passed"]}
    assert metric in failed, status["analysis"]
    if metric == "scoreMeanShift":  # the only thing wrong with it
        assert list(failed) == [metric], status["analysis"]
    # The slow candidate also trips its own model breaker (every call slower than the SLO),
    # whose rejections count as errors; the erroring one answers no score to average. When the
    # breaker opened before a slow answer fell in the step's window, its p99 has no value
    # (inconclusive, which never passes: CI saw it once) and the errors it caused decide.
    judged = metric if "value" in failed[metric] else "errorRate"
    if judged != metric:
        assert metric == "p99LatencyMs", status["analysis"]
    value, gate = failed[judged]["value"], failed[judged]["max"]
    assert value > gate
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"rolled-back-{metric}.json").write_text(json.dumps(status["analysis"]))
    ((_reason, message),) = [(r, m) for r, m in events_of(chain, name) if r == "RolledBack"]
    assert judged in message
    assert f"{value:.4g}" in message  # the measured value, in the sentence
    plan = json.loads(chain.get("cm", "scorer-rtml-traffic")["data"]["traffic.json"])
    assert "experiment" not in plan  # all traffic back on the champion
    if metric == "scoreMeanShift":  # the others' own requests fail while they are tried
        assert load.failed() == [], load.failed()[:5]
    # What the engineer on call reads: the history as a table, the gate that failed in it.
    shown = rtml_experiment(chain, "status", name)
    assert "RolledBack" in shown
    assert any(metric in line and line.rstrip().endswith("no") for line in shown.splitlines())
    assert chain.get("rmodel", "scorer")["status"]["activeVersion"] == "v2"


@pytest.mark.timeout(600)
def test_prometheus_down_pauses_and_a_killed_operator_resumes_at_the_same_step(
    chain: Chain,
) -> None:
    name = "try-outages"
    url = chain.service_url("scorer")
    slow_steps = {"steps": [20, 50], "stepInterval": "20s"}
    with EntityLoad(url, rate=25) as load:
        # Outages, not latency, are what this tests: the loose p99 gate (GATES) is what lets
        # the load of a Prometheus restart (WAL replay) and an operator restart on 2 cores
        # pass (a CI run saw 205.6 ms in the step the operator was killed in).
        apply(chain.plane, experiment(chain, name, "model.onnx", "v-again", canary=slow_steps))
        chain.wait("the first step", lambda: phase_of(chain, name).get("windowStart"), 180)
        chain.prometheus.stop()
        try:
            paused = wait_phase(chain, name, ("Paused", "RolledBack", "Promoted"), 120)
            assert paused["phase"] == "Paused", paused
            assert paused["pausedReason"] == "MetricsUnavailable"
            time.sleep(15)  # never promoted while Prometheus is down
            assert phase_of(chain, name)["phase"] == "Paused"
        finally:
            chain.prometheus.start()
        wait_phase(chain, name, ("Progressing",), 120)
        # SIGKILL the operator mid-step: its successor goes on at the same step and weight.
        chain.wait("step 2", lambda: phase_of(chain, name).get("currentStep") == 1, 180)
        before = phase_of(chain, name)
        (operator,) = json.loads(kubectl(chain.plane, "-n", SYSTEM, "get", "pods", "-o",
                                         "json"))["items"]  # fmt: skip
        for pid in container_pids(operator["metadata"]["uid"]):
            os.kill(pid, signal.SIGKILL)
        chain.wait("the operator to restart", lambda: _restarts(chain) >= 1, 120)
        after = phase_of(chain, name)
        assert (after["currentStep"], after["candidateWeight"]) == (1, 50), (before, after)
        final = wait_phase(chain, name, ("Completed", "RolledBack"), 240)
    assert final["phase"] == "Completed", final
    assert load.failed() == [], load.failed()[:5]
    reasons = [r for r, _ in events_of(chain, name)]
    assert "MetricsUnavailable" in reasons, reasons
    assert "Resumed" in reasons, reasons


def rtml_experiment(chain: Chain, verb: str, name: str) -> str:
    out = run_rtml("experiment", verb, name, "-n", TENANT, "--kubeconfig",
                   str(chain.plane.kubeconfig))  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def _restarts(chain: Chain) -> int:
    (pod,) = json.loads(kubectl(chain.plane, "-n", SYSTEM, "get", "pods", "-o", "json"))["items"]
    ready = pod["status"]["containerStatuses"][0]
    return int(ready["restartCount"]) if ready.get("ready") else 0


@pytest.mark.timeout(600)
def test_deleting_a_running_experiment_sends_all_traffic_back_without_a_failed_request(
    chain: Chain,
) -> None:
    name = "try-deleted"
    url = chain.service_url("scorer")
    events: list[tuple[float, str]] = []  # when each step was taken, for a failure's message
    with EntityLoad(url, rate=40) as load:
        events.append((time.monotonic(), "applied"))
        apply(chain.plane, experiment(chain, name, "model.onnx", "v-deleted"))
        chain.wait("the candidate to answer",
                   lambda: any(v[3] == "candidate" for v in load.variants), 180)  # fmt: skip
        # The engineer on call pauses it (the weight holds) and resumes it, with the CLI.
        events.append((time.monotonic(), "candidate answered; pause"))
        rtml_experiment(chain, "pause", name)
        paused = wait_phase(chain, name, ("Paused",), 60)
        assert (paused["pausedReason"], paused["candidateWeight"]) == ("PausedByUser", 20)
        events.append((time.monotonic(), "paused; resume"))
        rtml_experiment(chain, "resume", name)
        wait_phase(chain, name, ("Progressing",), 60)
        events.append((time.monotonic(), "resumed; delete"))
        kubectl(chain.plane, "-n", TENANT, "delete", "rexp", name)
        deleted_at = time.monotonic()

        def champion_only() -> bool:
            recent = [v for v in load.variants if v[0] > time.monotonic() - 3]
            return bool(recent) and all(v[3] == "champion" for v in recent)

        chain.wait("every answer to come from the champion", champion_only, 120)
        back_after = time.monotonic() - deleted_at
        time.sleep(3)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if load.failed():
        # When, against the steps above, and what the pod logged: a failure here once came
        # from a stall nobody could place afterwards (CI, after the operator-kill test).
        (RESULTS / "experiment-deleted-runtime.log").write_text(
            kubectl(chain.plane, "-n", TENANT, "logs", "deploy/scorer", "--tail=300")
        )
        start = events[0][0]
        steps = [f"{t - start:.1f} s {what}" for t, what in events]
        failed = [(round(t - start, 2), code, out) for t, code, out in load.failed()]
        pytest.fail(f"{len(failed)} failed of {len(load.results)}; steps {steps}; "
                    f"failed {failed[:8]}")  # fmt: skip
    (RESULTS / "experiment-deleted.json").write_text(json.dumps(
        {"requests": len(load.results),
         "seconds_to_champion_only": round(back_after, 1)}))  # fmt: skip
    assert "experiment" not in chain.get("rmodel", "scorer")["status"]


# --- autoscaling: metrics-server, prometheus-adapter and the HPA controller, on real pods ---------
ADAPTER_RULES = CHART / "files" / "prometheus-adapter-rules.yaml"
# Per-pod targets a load on this 2-core machine clearly exceeds, and an idle pod clearly meets.
SCALING = {
    "concurrency": {"target": 0.1},  # requests in flight per pod, averaged over a minute
    "rps": {"target": 40},  # requests per second per pod
    "cpu": {"target": 50},  # percent of the pod's CPU request (100m below)
}


@pytest.fixture(scope="module")
def custom_metrics(chain: Chain, tmp_path_factory: pytest.TempPathFactory) -> LocalControlPlane:
    """prometheus-adapter (built from its Go module, as metrics-server, which the cluster runs)
    serving custom.metrics.k8s.io from the chain's Prometheus with the chart's adapter rules."""
    plane = chain.plane
    assert plane.node_bin is not None
    start_prometheus_adapter(
        plane.launch_addon,
        lambda docs: plane.apply_docs("prometheus-adapter", docs),
        plane.node_bin / "prometheus-adapter",
        plane.certs,
        plane.kubeconfig,
        tmp_path_factory.mktemp("prometheus-adapter"),
        chain.prometheus.url,
        ADAPTER_RULES,
    )
    chain.wait("the custom metrics API to be served",
               lambda: _raw(plane, "/apis/custom.metrics.k8s.io/v1beta1"), 120)  # fmt: skip
    return plane


def _raw(plane: LocalControlPlane, path: str) -> dict[str, Any] | None:
    result = subprocess.run(
        [str(plane.bin_dir / "kubectl"), f"--kubeconfig={plane.kubeconfig}", "get", "--raw",
         path], capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return json.loads(result.stdout) if result.returncode == 0 else None


def autoscaled_model(chain: Chain, metric: str) -> dict[str, Any]:
    _, model = fraud_docs("model.onnx", sha256(chain.offline / "model.onnx"),
                          name=f"scale-{metric}")  # fmt: skip
    model["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 3, "metric": metric,
                                    **SCALING[metric]}  # fmt: skip
    # The load saturates this 2-core machine on purpose: a deadline is not what is tested here
    # (the example's 50 ms would turn queueing into 504s), pods coming and going are.
    model["spec"]["slo"] = {"p99LatencyMs": 50, "timeoutMs": 5000, "featureBudgetMs": 1000}
    # A small CPU request: three Models of three pods fit the node beside the rest.
    model["spec"]["runtime"] = {"resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                              "limits": {"memory": "1Gi"}}}  # fmt: skip
    return model  # type: ignore[no-any-return]


class Wrk:
    """wrk against one URL until stopped (SIGINT makes it print its summary): the heavy part of
    the ramp; its summary counts non-2xx answers and socket errors."""

    def __init__(self, url: str, connections: int, script: Path) -> None:
        self.proc = subprocess.Popen(
            ["wrk", "-t1", f"-c{connections}", "-d600s", "--timeout", "5s", "-s", str(script),
             f"{url}/predict"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def stop(self) -> dict[str, int]:
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        requests = re.search(r"(\d+) requests in", out)
        assert requests, f"wrk printed no summary:\n{out}"
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
        )
        kinds = ("connect", "read", "write", "timeout")
        return {
            "requests": int(requests.group(1)),
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            **{
                k: int(n) for k, n in zip(kinds, errors.groups() if errors else "0000", strict=True)
            },
        }


def replicas(chain: Chain, name: str) -> int:
    """Ready pods of the Model (not terminating)."""
    return sum(
        1
        for p in chain.model_pods(name)
        for c in p.get("status", {}).get("conditions", [])
        if c["type"] == "Ready" and c["status"] == "True"
    )


def endpoint_programming(plane: LocalControlPlane) -> dict[str, Any]:
    """kube-proxy's own histogram of how long an endpoint change (a pod gone or unready) took to
    reach the service rules: what the runtime's preStop sleep has to outlast."""
    assert plane.node is not None
    assert plane.node.proxy_metrics_url
    with urllib.request.urlopen(plane.node.proxy_metrics_url, timeout=10) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    buckets = {
        float(s.labels["le"]): int(s.value)
        for family in text_string_to_metric_families(text)
        if family.name == "kubeproxy_network_programming_duration_seconds"
        for s in family.samples
        if s.name.endswith("_bucket")
    }
    changes = buckets.get(float("inf"), 0)
    slowest = min((le for le, n in buckets.items() if n == changes), default=0.0)
    return {
        "changes": changes,
        "over_prestop_sleep": changes
        - max((n for le, n in buckets.items() if le <= PRESTOP_SLEEP_SECONDS), default=0),
        "slowest_within_s": slowest,
    }


def scaling_failure_report(
    chain: Chain,
    failures: dict[str, list[tuple[float, int, str]]],
    started: float,
    stopped: float,
    names: dict[str, str],
    programming: dict[str, Any],
) -> str:
    """Failed light requests placed in the ramp (seconds after the heavy load began and after it
    stopped) beside what the cluster recorded: restarts, probe failures, kills."""
    lines = ["light requests failed:"]
    for m, rows in failures.items():
        for at, code, what in rows:
            lines.append(
                f"  {m}: {what} (status {code}) at {at - started:+.1f} s from the heavy load,"
                f" {at - stopped:+.1f} s from its end"
            )
    for name in names.values():
        for pod in chain.model_pods(name):
            for c in pod.get("status", {}).get("containerStatuses", []):
                lines.append(
                    f"  pod {pod['metadata']['name']}: restarts {c.get('restartCount')},"
                    f" last state {json.dumps(c.get('lastState', {}))}"
                )
    lines.append(f"  endpoint changes in kube-proxy: {programming}")
    events = kubectl(chain.plane, "-n", TENANT, "get", "events", "--sort-by=.lastTimestamp")
    lines += ["events:", *[f"  {e}" for e in events.splitlines() if "scale-" in e]]
    return "\n".join(lines)


@pytest.mark.timeout(1200)
def test_models_scale_out_under_load_and_back_in_after_it(
    chain: Chain, custom_metrics: LocalControlPlane, tmp_path: Path
) -> None:
    """concurrency and rps through prometheus-adapter, cpu through metrics-server, each read by
    the real HPA controller; light traffic runs throughout and no request may fail."""
    names = {metric: f"scale-{metric}" for metric in SCALING}
    retire(chain, "fraud", "tampered", "scorer")  # the node's CPU is what the HPAs measure
    apply(chain.plane, *(autoscaled_model(chain, m) for m in SCALING))
    for name in names.values():
        wait_ready(chain, name)
    script = tmp_path / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(json.dumps(REQUEST))}\n"
    )
    urls = {m: chain.service_url(n) for m, n in names.items()}
    light = {m: Load(u, rate=5) for m, u in urls.items()}
    timings: dict[str, dict[str, float]] = {m: {} for m in SCALING}
    heavy: dict[str, dict[str, int]] = {}
    for load in light.values():
        load.__enter__()
    try:
        # The ramp: a little more load, then a lot, until every Model has three ready pods.
        loads = {m: Wrk(u, 2, script) for m, u in urls.items()}
        time.sleep(20)
        for m, w in loads.items():
            heavy[f"{m}@2"] = w.stop()
        loads = {m: Wrk(u, 12, script) for m, u in urls.items()}
        started = time.monotonic()
        try:
            while len([m for m in SCALING if "up_seconds" in timings[m]]) < len(SCALING):
                for m, name in names.items():
                    if "up_seconds" not in timings[m] and replicas(chain, name) >= 3:
                        timings[m]["up_seconds"] = round(time.monotonic() - started, 1)
                if time.monotonic() - started > 420:
                    hpas = kubectl(chain.plane, "-n", TENANT, "describe", "hpa")
                    pytest.fail(f"not every Model reached 3 pods in 420 s: {timings}\n{hpas}")
                time.sleep(2)
        finally:
            for m, w in loads.items():
                heavy[f"{m}@12"] = w.stop()
        stopped = time.monotonic()
        while len([m for m in SCALING if "down_seconds" in timings[m]]) < len(SCALING):
            for m, name in names.items():
                pods = chain.model_pods(name)
                if "down_seconds" not in timings[m] and len(pods) == 1:
                    timings[m]["down_seconds"] = round(time.monotonic() - stopped, 1)
            if time.monotonic() - stopped > 480:
                hpas = kubectl(chain.plane, "-n", TENANT, "describe", "hpa")
                pytest.fail(f"not every Model went back to 1 pod in 480 s: {timings}\n{hpas}")
            time.sleep(2)
        time.sleep(5)
    finally:
        for load in light.values():
            load.__exit__(None, None, None)
    programming = endpoint_programming(chain.plane)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "autoscaling.json").write_text(json.dumps(
        {"timings": timings, "heavy": heavy,
         "light": {m: len(load.results) for m, load in light.items()},
         "endpoint_programming": programming}, indent=1))  # fmt: skip
    failures = {m: [r for r in load.results if r[1] != 200] for m, load in light.items()}
    if any(failures.values()):
        pytest.fail(scaling_failure_report(chain, failures, started, stopped, names, programming))
    for key, summary in heavy.items():
        assert summary["requests"] > 0, key
        failed = {k: n for k, n in summary.items() if k != "requests" and n}
        assert failed == {}, (key, summary)
    for name in names.values():
        hpa = chain.get("hpa", name)
        assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 30
        # The HPA owns the replica count: the operator's applies never set it.
        shown = kubectl(chain.plane, "-n", TENANT, "get", "deployment", name, "-o", "json",
                        "--show-managed-fields")  # kubectl hides them by default  # fmt: skip
        fields = json.loads(shown)["metadata"]["managedFields"]
        ours = [f for f in fields if f["manager"] == "rtml-operator"]
        assert ours, fields
        assert all("f:replicas" not in f["fieldsV1"].get("f:spec", {}) for f in ours), ours
