"""The operator image runs the chart's container as written: its image reference, args and env
from `helm template`, read-only as the chart's user, against the real control plane.

The kubelet would mount a service-account token; here a kubeconfig (KUBECONFIG, the one thing
added) stands in for it. `watchNamespaces` keeps it off the namespaces the session's own
operator process reconciles.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from rtml.dev.tools import ensure_tools
from tests.images import podman_logs, podman_rm, podman_run
from tests.kube import REPO, resolve_env

pytestmark = [pytest.mark.apiserver, pytest.mark.helm, pytest.mark.images]
CHART = REPO / "charts" / "rtml"


def _no_secret(name: str, key: str) -> str:
    raise AssertionError(f"the chart refers to Secret {name}/{key} without feast.existingSecret")


def _health(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback
            return int(r.status)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def test_the_operator_image_runs_the_charts_container(
    control_plane: Any, built_images: dict[str, str], rtml_crds: list[str], tmp_path: Path
) -> None:
    helm = ensure_tools(progress=lambda _m: None) / "helm"
    watched = f"img-{uuid.uuid4().hex[:6]}"
    rendered = subprocess.run(
        [str(helm), "template", "t", str(CHART), "--set", f"watchNamespaces={{{watched}}}"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    (deployment,) = [
        d for d in yaml.safe_load_all(rendered.stdout) if d and d["kind"] == "Deployment"
    ]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == built_images["operator"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    token = tmp_path / "token"  # a folder standing in for the service-account token volume
    token.mkdir(mode=0o755)
    kubeconfig = token / "kubeconfig"
    shutil.copy(control_plane.kubeconfig, kubeconfig)
    kubeconfig.chmod(0o644)  # readable by the chart's user, as a mounted token would be
    name = f"rtml-operator-{uuid.uuid4().hex[:6]}"
    # The downward API's pod name and namespace: the leader election's identity and the
    # Lease's namespace ("default": the API server makes it; the chart's is the release's).
    fields = {"metadata.name": name, "metadata.namespace": "default"}
    env = {
        **resolve_env(container, _no_secret, fields),
        "KUBECONFIG": "/var/run/rtml/kubeconfig",
    }
    port = container["ports"][0]["containerPort"]
    liveness = f"http://127.0.0.1:{port}{container['livenessProbe']['httpGet']['path']}"
    if _health(liveness):
        pytest.fail(f"port {port} (the chart's liveness port) is taken; the test needs it")
    podman_run(
        container["image"],
        container["args"],
        env=env,
        mounts=[(token, "/var/run/rtml", True)],
        user=user,
        read_only=True,
        network="host",
        detach=True,
        name=name,
    )
    try:
        deadline = time.monotonic() + 90
        while _health(liveness) != 200:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the operator image never answered {liveness}:\n{podman_logs(name)[-3000:]}"
                )
            time.sleep(1)
        # A standby answers its health endpoint too: wait for it to lead (the chart runs it
        # with --leader-elect), then for Kopf's own endpoint.
        while '"message": "leading"' not in podman_logs(name):
            if time.monotonic() > deadline:
                pytest.fail(f"the operator image never led:\n{podman_logs(name)[-3000:]}")
            time.sleep(1)
        while _health(liveness) != 200:
            if time.monotonic() > deadline:
                pytest.fail(f"no health after leading:\n{podman_logs(name)[-3000:]}")
            time.sleep(1)
        logs = podman_logs(name)
        assert "--leader-elect" in container["args"]
        assert "starting operator" in logs
        assert "Traceback" not in logs, logs[-3000:]
    finally:
        podman_rm(name)
