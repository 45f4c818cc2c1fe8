"""`rtml demo`: the README's demo on one machine.

Brings up the local control plane, installs the chart's CRDs (and KServe's, when the shared
third-party CRDs are beside the checkout), runs the operator, applies the example Models and
shows what the operator made of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rtml.dev.cluster import LocalControlPlane
from rtml.dev.tools import ensure_tools

REPO = Path(__file__).resolve().parents[3]
KSERVE_CRD = (
    REPO.parent / "shared" / "thirdparty-crds" / "kserve.serving.kserve.io_inferenceservices.yaml"
)


def run_demo(examples: Path, keep: bool, echo: Callable[[str], None]) -> None:
    bin_dir = ensure_tools(progress=echo)
    workdir = Path(tempfile.mkdtemp(prefix="rtml-demo-"))
    plane = LocalControlPlane(workdir, bin_dir)
    echo(f"[1/5] starting etcd, kube-apiserver and kube-controller-manager in {workdir}")
    plane.start()
    kubectl = [str(bin_dir / "kubectl"), "--kubeconfig", str(plane.kubeconfig)]
    operator: subprocess.Popen[bytes] | None = None
    try:
        echo(f"[2/5] installing the chart's CRDs ({REPO / 'charts/rtml/crds'})")
        _kubectl(kubectl, "apply", "--server-side", "-f", str(REPO / "charts/rtml/crds"))
        if KSERVE_CRD.exists():
            echo(
                "      and KServe's InferenceService CRD, so the kserve backend has somewhere to go"
            )
            _kubectl(kubectl, "apply", "--server-side", "-f", str(KSERVE_CRD))
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

        echo("[3/5] starting the operator (`rtml operator`)")
        log = (workdir / "operator.log").open("wb")
        operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rtml.cli",
                "operator",
                "--kubeconfig",
                str(plane.kubeconfig),
                "--liveness",
                "",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "RTML_RESYNC_SECONDS": "5"},
        )
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
        echo(
            "$ kubectl get configmap,deployment,service,pdb,hpa,inferenceservice -l rtml.dev/model"
        )
        echo(
            _kubectl(kubectl, "get", "configmap,deployment,service,pdb,hpa", "-l", "rtml.dev/model")
        )
        if KSERVE_CRD.exists():
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
            operator.wait()
    finally:
        if operator is not None and operator.poll() is None:
            operator.terminate()
            operator.wait(15)
        plane.stop()


def _kubectl(base: list[str], *args: str) -> str:
    out = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.rstrip()
