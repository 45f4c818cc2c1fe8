"""The local cluster with a real node: pods run, the chart's operator runs as a pod, a Model
becomes a runtime pod that answers through its Service, and `down` leaves the host as it was.

Nothing stands in for the kubelet: pods are started by containerd and runc from the images
`rtml dev images build` made, under the Pod Security `restricted` profile.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rtml.dev.cluster import LocalControlPlane
from rtml.dev.node import KUBELET_SYSCTLS
from rtml.dev.nodeconfig import BRIDGE, CGROUP_ROOT
from rtml.dev.tools import ensure_node_tools, ensure_tools
from tests.kube import REPO
from tests.unit.runtime.onnx_fixtures import write_sum_model

pytestmark = [pytest.mark.node, pytest.mark.images, pytest.mark.helm]
CHART = REPO / "charts" / "rtml"
LOGS = REPO / ".test-logs" / "node"


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


RESTRICTED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
              "readOnlyRootFilesystem": True}  # fmt: skip
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip


def redis_pod(ns: str, image: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "redis", "namespace": ns, "labels": {"app": "redis"}},
         "spec": {"securityContext": POD_SECURITY, "containers": [
             {"name": "redis", "image": image, "imagePullPolicy": "Never",
              "ports": [{"containerPort": 6379}], "securityContext": RESTRICTED,
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


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    headers = {"content-type": "application/json"}
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 - the cluster's
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - the cluster's own IPs
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_the_charts_operator_pod_rolls_out_a_model_that_answers(
    node_cluster: LocalControlPlane, built_images: dict[str, str], tmp_path: Path
) -> None:
    """helm install with the local images -> the operator pod Ready by its own probes,
    reconciling with the chart's RBAC alone -> a Model -> a runtime pod through its startup and
    readiness probes -> a prediction through the Model's Service, counted in /metrics."""
    plane = node_cluster
    helm = ensure_tools(lambda _m: None) / "helm"
    installed = subprocess.run(
        [str(helm), f"--kubeconfig={plane.kubeconfig}", "install", "rtml", str(CHART),
         "--namespace", "rtml-system", "--create-namespace", "--wait", "--timeout", "4m",
         "--set", "feast.onlineStore=sqlite"],
        check=False, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if installed.returncode != 0:
        logs = subprocess.run(
            [str(plane.bin_dir / "kubectl"), f"--kubeconfig={plane.kubeconfig}", "-n",
             "rtml-system", "logs", "deploy/rtml-operator", "--tail=30"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        pytest.fail(f"helm install failed: {installed.stderr}\n{logs.stdout}{logs.stderr}")
    pods = json.loads(kubectl(plane, "-n", "rtml-system", "get", "pods", "-o", "json"))["items"]
    (operator,) = pods
    assert operator["status"]["containerStatuses"][0]["ready"] is True

    ns = restricted_namespace(plane)
    model = write_sum_model(tmp_path / "model.onnx", ["a", "b"])
    digest = __import__("hashlib").sha256(model.read_bytes()).hexdigest()
    kubectl(plane, "-n", ns, "create", "configmap", "models", f"--from-file=model.onnx={model}")
    # An artifact server inside the cluster: the runtime image's Python, the model from a
    # ConfigMap (nothing is downloaded from outside the machine).
    apply(
        plane,
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "models", "namespace": ns, "labels": {"app": "models"}},
         "spec": {"securityContext": POD_SECURITY, "containers": [
             {"name": "http", "image": built_images["runtime"], "imagePullPolicy": "Never",
              "command": ["python3", "-m", "http.server", "8000", "--directory", "/models"],
              "securityContext": RESTRICTED, "ports": [{"containerPort": 8000}],
              "volumeMounts": [{"name": "models", "mountPath": "/models"}]}],
             "volumes": [{"name": "models", "configMap": {"name": "models"}}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "models", "namespace": ns},
         "spec": {"selector": {"app": "models"}, "ports": [{"port": 8000}]}},
        {"apiVersion": "rtml.dev/v1alpha1", "kind": "Model",
         "metadata": {"name": "sum", "namespace": ns},
         "spec": {"version": "v1",
                  "artifact": {"uri": f"http://models.{ns}.svc.cluster.local:8000/model.onnx",
                               "sha256": digest},
                  "features": {"requestFeatures": ["a", "b"]},
                  "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
                  "warmup": {"requests": 5}}},
    )  # fmt: skip
    deadline = time.monotonic() + 300
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        got = json.loads(kubectl(plane, "-n", ns, "get", "rmodel", "sum", "-o", "json"))
        status = got.get("status") or {}
        if status.get("phase") == "Ready":
            break
        time.sleep(3)
    else:
        pods_now = kubectl(plane, "-n", ns, "get", "pods", "-o", "wide")
        logs = kubectl(plane, "-n", "rtml-system", "logs", "deploy/rtml-operator", "--tail=40")
        pytest.fail(f"Model not Ready: {status}\n{pods_now}\n{logs}")
    assert status["readyReplicas"] == 1
    service_ip = kubectl(plane, "-n", ns, "get", "svc", "sum", "-o", "jsonpath={.spec.clusterIP}")
    port = kubectl(plane, "-n", ns, "get", "svc", "sum", "-o", "jsonpath={.spec.ports[0].port}")
    code, body = _post(f"http://{service_ip}:{port}/predict", {"features": {"a": 1.0, "b": 2.0}})
    assert code == 200, body
    assert body["degraded"] is False
    assert abs(body["score"] - 1 / (1 + 2.718281828**-3.0)) < 1e-4
    with urllib.request.urlopen(f"http://{service_ip}:{port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert "rtml_requests_total{" in metrics
    assert 'outcome="ok"' in metrics
