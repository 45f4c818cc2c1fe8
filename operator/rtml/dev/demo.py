"""`rtml demo`: the README's demo on one machine.

Brings up the local control plane, installs the chart's CRDs (and KServe's, fetched at a pinned
version by rtml.dev.thirdparty), runs the operator, applies the example Models and shows what the
operator made of them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from rtml.dev.cluster import LocalControlPlane
from rtml.dev.process import Managed, spawn, stop
from rtml.dev.thirdparty import KSERVE_CRD as KSERVE_CRD_FILE
from rtml.dev.thirdparty import thirdparty_crds_dir
from rtml.dev.tools import ensure_tools
from rtml_runtime.bench import format_result, load_body, run_bench


def kserve_crd() -> Path | None:
    crd = thirdparty_crds_dir() / KSERVE_CRD_FILE
    return crd if crd.exists() else None


def run_demo(repo: Path, examples: Path, keep: bool, echo: Callable[[str], None]) -> None:
    """`repo`: the checkout (its charts/rtml/crds and examples)."""
    bin_dir = ensure_tools(progress=echo)
    workdir = Path(tempfile.mkdtemp(prefix="rtml-demo-"))
    plane = LocalControlPlane(workdir, bin_dir)
    echo(f"[1/5] starting etcd, kube-apiserver and kube-controller-manager in {workdir}")
    plane.start()
    kubectl = [str(bin_dir / "kubectl"), "--kubeconfig", str(plane.kubeconfig)]
    operator: Managed | None = None
    try:
        _install_crds(repo, kubectl, echo)

        echo("[3/5] starting the operator (`rtml operator`)")
        operator = spawn(
            "rtml operator",
            [sys.executable, "-m", "rtml.cli", "operator", "--kubeconfig", str(plane.kubeconfig),
             "--liveness", ""],
            workdir / "operator.log",
            cwd=repo,
            env={"RTML_RESYNC_SECONDS": "5"},
        )  # fmt: skip
        echo(f"[4/5] applying {examples}")
        echo(_kubectl(kubectl, "apply", "-f", str(examples)))
        for _ in range(60):
            out = _kubectl(
                kubectl,
                "get",
                "rmodel",
                "-o",
                "jsonpath={range .items[*]}{.status.phase}{'\\n'}{end}",
            )
            if out.split() and all(p for p in out.split()):
                break
            time.sleep(0.5)
        time.sleep(2)
        echo("[5/5] what the operator made of them\n")
        echo("$ kubectl get rmodel -o wide")
        echo(_kubectl(kubectl, "get", "rmodel", "-o", "wide"))
        echo("$ kubectl get rmodel -o jsonpath='<name>: <Ready reason>: <Ready message>'")
        echo(
            _kubectl(
                kubectl,
                "get",
                "rmodel",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}: "
                '{.status.conditions[?(@.type=="Ready")].reason}: '
                '{.status.conditions[?(@.type=="Ready")].message}{"\\n"}{end}',
            )
        )
        echo(
            "$ kubectl get configmap,deployment,service,pdb,hpa,inferenceservice -l rtml.dev/model"
        )
        echo(
            _kubectl(kubectl, "get", "configmap,deployment,service,pdb,hpa", "-l", "rtml.dev/model")
        )
        if kserve_crd() is not None:
            echo(_kubectl(kubectl, "get", "inferenceservice", "-l", "rtml.dev/model"))
        echo("$ kubectl get rmodel fraud -o jsonpath='{.status.conditions}'")
        echo(
            _kubectl(
                kubectl,
                "get",
                "rmodel",
                "fraud",
                "-o",
                "jsonpath={range .status.conditions[*]}{.type}={.status} ({.reason}): "
                "{.message}{'\\n'}{end}",
            )
        )
        echo(
            "There is no kubelet in the local control plane, so pods are created but never run: "
            "the Models stay Progressing until a real cluster (or a later demo stage) runs them."
        )
        if keep:
            echo(f"\nLeft running. export KUBECONFIG={plane.kubeconfig}; stop with Ctrl-C.")
            assert operator.popen is not None
            operator.popen.wait()
    finally:
        if operator is not None:
            stop(operator)
        plane.stop()


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


def _install_crds(repo: Path, kubectl: list[str], echo: Callable[[str], None]) -> None:
    """The chart's CRDs (and KServe's when at hand), waited for until the API serves them."""
    echo(f"[2/5] installing the chart's CRDs ({repo / 'charts/rtml/crds'})")
    _kubectl(kubectl, "apply", "--server-side", "-f", str(repo / "charts/rtml/crds"))
    kserve = kserve_crd()
    if kserve is not None:
        echo("      and KServe's InferenceService CRD, so the kserve backend has somewhere to go")
        _kubectl(kubectl, "apply", "--server-side", "-f", str(kserve))
    else:
        echo(
            f"      KServe's CRD ({KSERVE_CRD_FILE}) is not in {thirdparty_crds_dir()}: the kserve "
            "Model will say KServeNotInstalled, as it would in such a cluster"
        )
    for attempt in range(10):  # a CRD has no status for a moment after it is created
        try:
            _kubectl(
                kubectl, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"
            )
            break
        except RuntimeError:
            if attempt == 9:
                raise
            time.sleep(0.5)
    # Established is not yet served: discovery lags it by a moment. Start the operator
    # once the kinds are listed, so its first look at the cluster sees them.
    kinds = ["models.rtml.dev"] + (["inferenceservices.serving.kserve.io"]
                                   if kserve is not None else [])  # fmt: skip
    for _ in range(40):
        listed = _kubectl(kubectl, "api-resources", "-o", "name")
        if all(k in listed.split() for k in kinds):
            break
        time.sleep(0.25)


def _kubectl(base: list[str], *args: str) -> str:
    out = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.rstrip()
