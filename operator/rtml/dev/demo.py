"""`rtml demo`: the README's demo on one machine.

Part 1 brings up the local cluster with its node, builds (or reuses) the images, installs the
chart with a password-protected Redis and a PostgreSQL registry (rtml.dev.stack, the same set-up
the node tests check), applies the fraud example's FeatureView and Model with artifacts built
here and served inside the cluster, materializes, waits for Ready, and sends predictions to the
Model's Service. Part 2 serves the same Model on this machine alone (`rtml serve`).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from rtml.dev.cluster import LocalControlPlane
from rtml.dev.errors import DevError
from rtml.dev.images import build_images, built_refs, read_project
from rtml.dev.nodeconfig import BRIDGE_IP, POD_CIDR
from rtml.dev.postgres import PostgresServer
from rtml.dev.process import spawn, stop
from rtml.dev.stack import Stack, helm_install
from rtml.dev.tools import ensure_node_tools, ensure_tools
from rtml_runtime.bench import format_result, load_body, run_bench

STACK = Stack()


def run_demo(repo: Path, examples: Path | None, keep: bool, echo: Callable[[str], None]) -> None:
    """The cluster part on a real node: `repo` is the checkout (chart, examples, Containerfiles);
    `examples`, if given, more manifests applied in the tenant namespace at the end."""
    if os.geteuid() != 0:
        raise DevError("the local cluster's node needs root (kubelet, containerd, a bridge)")
    bin_dir = ensure_tools(progress=echo)
    node_bin = ensure_node_tools(progress=echo)
    echo("[1/7] the images: runtime, operator and Redis (`rtml dev images build`, cached)")
    build_images(repo, progress=echo)
    images = built_refs(read_project(repo).version)
    workdir = Path(tempfile.mkdtemp(prefix="rtml-demo-"))
    plane = LocalControlPlane(workdir, bin_dir, node_bin)
    echo(f"[2/7] starting the cluster in {workdir}: etcd, kube-apiserver, controller-manager, "
         "scheduler, and a node (containerd, runc, kubelet, kube-proxy, CoreDNS)")  # fmt: skip
    started = time.monotonic()
    plane.start(timeout=600)
    echo(f"      node Ready in {time.monotonic() - started:.0f}s")
    kubectl = [str(bin_dir / "kubectl"), "--kubeconfig", str(plane.kubeconfig)]
    registry: PostgresServer | None = None
    try:
        echo("[3/7] the fraud example from synthetic data (examples/fraud/build.py), and the "
             "Feast registry: PostgreSQL on this machine (as a managed database)")  # fmt: skip
        offline = _build_example(repo, workdir / "offline")
        registry = PostgresServer(Path(tempfile.mkdtemp(prefix="rtml-demo-pg-")),
                                  listen=("127.0.0.1", BRIDGE_IP))  # fmt: skip
        registry_url = _start_registry(registry)
        echo(f"[4/7] Redis (password in Secret {STACK.secret}), the offline volume, an artifact "
             "server, then `helm install rtml charts/rtml`")  # fmt: skip
        docs = STACK.manifests(redis_password=secrets.token_hex(16), registry_url=registry_url,
                               offline=offline, images=images)  # fmt: skip
        _kubectl(kubectl, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
        values = workdir / "values.yaml"
        values.write_text(yaml.safe_dump(STACK.chart_values()))
        helm_install(bin_dir / "helm", bin_dir / "kubectl", plane.kubeconfig,
                     repo / "charts/rtml", values, STACK.system)  # fmt: skip
        for pod in ("redis", "models"):
            _kubectl(kubectl, "-n", STACK.tenant, "wait", "--for=condition=Ready", f"pod/{pod}",
                     "--timeout=180s")  # fmt: skip
        echo(_kubectl(kubectl, "-n", STACK.system, "get", "pods"))
        _fraud_on_the_node(repo, offline, kubectl, echo)
        if examples is not None:
            echo(f"$ kubectl apply -n {STACK.tenant} -f {examples}")
            echo(_kubectl(kubectl, "-n", STACK.tenant, "apply", "-f", str(examples)))
        if keep:
            echo(f"\nLeft running. export KUBECONFIG={plane.kubeconfig}; stop with Ctrl-C.")
            while True:
                time.sleep(3600)
    finally:
        if registry is not None:
            registry.stop()
            shutil.rmtree(registry.workdir, ignore_errors=True)
        plane.stop()


def _build_example(repo: Path, out: Path) -> Path:
    subprocess.run([sys.executable, str(repo / "examples/fraud/build.py"), "--out", str(out)],
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    out.chmod(0o755)  # the pods run as 65532
    for file in out.iterdir():
        file.chmod(0o644)
    return out


def _start_registry(registry: PostgresServer) -> str:
    """Start it, reachable from the pod network with a new password; its SQLAlchemy URL."""
    registry.init()
    registry.start()
    registry.create_database("feast")
    password = secrets.token_hex(16)
    registry.allow_with_password(POD_CIDR, password)
    return f"postgresql+psycopg://rtml:{password}@{BRIDGE_IP}:{registry.port}/feast"


def _fraud_on_the_node(
    repo: Path, offline: Path, kubectl: list[str], echo: Callable[[str], None]
) -> None:
    ns = ["-n", STACK.tenant]
    echo("[5/7] kubectl apply the fraud FeatureView; materialize now: kubectl annotate rfv "
         "card-features rtml.dev/materialize-now=... (a Job of its CronJob)")  # fmt: skip
    sha256 = (offline / "model.onnx.sha256").read_text().split()[0]
    view, model = STACK.fraud(repo / "examples/fraud/model.yaml", "model.onnx", sha256)
    _kubectl(kubectl, "apply", "-f", "-", stdin=yaml.safe_dump(view))
    _kubectl(kubectl, *ns, "wait", "--for=condition=Registered", "rfv/card-features",
             "--timeout=180s")  # fmt: skip
    _kubectl(kubectl, *ns, "annotate", "rfv", "card-features", "--overwrite",
             f"rtml.dev/materialize-now={time.time():.0f}")  # fmt: skip
    job = ""
    for _ in range(120):
        jobs = _kubectl(kubectl, *ns, "get", "jobs", "-o", "name").split()
        job = next((j for j in jobs if "card-features-materialize-now-" in j), "")
        if job:
            break
        time.sleep(0.5)
    if not job:
        raise DevError("the operator made no materialization Job within 60 s of the annotation")
    _kubectl(kubectl, *ns, "wait", "--for=condition=Complete", job, "--timeout=300s")
    echo(f"      {job}: " + _kubectl(kubectl, *ns, "logs", job, "--tail=1"))
    echo("      kubectl apply the fraud Model (its artifact from the artifact server, digest "
         "checked); waiting for Ready")  # fmt: skip
    _kubectl(kubectl, "apply", "-f", "-", stdin=yaml.safe_dump(model))
    _kubectl(kubectl, *ns, "wait", "--for=jsonpath={.status.phase}=Ready", "rmodel/fraud",
             "--timeout=300s")  # fmt: skip
    _kubectl(kubectl, *ns, "wait", "--for=condition=Materialized", "rfv/card-features",
             "--timeout=120s")  # fmt: skip
    svc = json.loads(_kubectl(kubectl, *ns, "get", "svc", "fraud", "-o", "json"))
    url = f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}/predict"
    echo(f"[6/7] predictions through the Model's Service ({url})")
    request = json.loads((repo / "examples/fraud/request.json").read_text())
    for card in (request["entity_id"], "card_00007", "card_never_seen"):
        body = {**request, "entity_id": card}
        echo(f"$ curl -s {url} -d '{json.dumps(body)}'")
        echo(_post(url, body))
    echo(f"[7/7] $ kubectl get rmodel,rfv,pods,svc -n {STACK.tenant}")
    echo(_kubectl(kubectl, *ns, "get", "rmodel,rfv,pods,svc"))


def _post(url: str, body: dict[str, object]) -> str:
    headers = {"content-type": "application/json"}
    req = urllib.request.Request(url, json.dumps(body).encode(), headers)  # noqa: S310 - http
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - the cluster's own IP
            return str(r.read().decode())
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}: {e.read().decode(errors='replace')}"


def run_serving_demo(
    repo: Path, echo: Callable[[str], None], port: int = 3000, duration_s: float = 10.0
) -> None:
    """The one-machine path: build the fraud example, serve it, send a request, benchmark it."""
    example = repo / "examples" / "fraud"
    echo("[1/4] building the fraud model from synthetic transactions (examples/fraud/build.py)")
    subprocess.run([sys.executable, str(example / "build.py")], check=True)
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise RuntimeError(
                f"port {port} is already in use (an earlier `rtml serve`?); stop it first, or the "
                "demo would measure that server instead of a fresh one"
            )
    echo(
        f"[2/4] rtml serve examples/fraud/model.yaml --port {port}  (Feast: SQLite on this machine)"
    )
    log_path = example / "build" / "serve.log"
    server = spawn(
        "rtml serve",
        [
            sys.executable,
            "-m",
            "rtml.cli",
            "serve",
            str(example / "model.yaml"),
            "--port",
            str(port),
        ],
        log_path,
        cwd=repo,
    )
    try:
        started = time.monotonic()
        while True:
            if not server.running():
                raise RuntimeError(f"rtml serve {server.exit_description()}; see {log_path}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/v2/health/ready", timeout=1
                ) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - started > 180:
                raise RuntimeError(f"rtml serve was not ready within 180 s; see {log_path}")
            time.sleep(0.25)
        echo(
            f"      ready in {time.monotonic() - started:.1f}s (model loaded, warmed, features "
            "registered and materialised)"
        )
        body = (example / "request.json").read_bytes()
        echo(f"$ curl -s localhost:{port}/predict -d @examples/fraud/request.json")
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict",
            data=body,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310
            echo(json.dumps(json.loads(r.read())))
        url = f"http://127.0.0.1:{port}/predict"
        for step, c in ((3, 1), (4, 16)):
            echo(f"[{step}/4] rtml bench --concurrency {c} --duration {duration_s:g}")
            result = asyncio.run(run_bench(url, load_body(example / "request.json"), c, duration_s))
            echo(format_result(result, c))
    finally:
        stop(server, grace=20)  # the whole process group: BentoML's arbiter and its worker


def _kubectl(base: list[str], *args: str, stdin: str | None = None) -> str:
    out = subprocess.run([*base, *args], input=stdin, capture_output=True, text=True,
                         timeout=400, check=False)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.rstrip()
