"""Helpers and fixtures for tests against the real API server: CRDs, namespaces, the operator."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from rtml.dev.postgres import PostgresServer
from rtml.dev.thirdparty import KSERVE_CRD, thirdparty_crds_dir
from rtml.operator.conditions import get_condition
from tests.runtime_proc import RedisServer, rtml_env

REPO = Path(__file__).resolve().parents[1]


LOGS = REPO / ".test-logs"


def thirdparty_crd(file: str) -> Path:
    """An upstream CRD at its pinned version (or from `$RTML_THIRDPARTY_CRDS`); fails when
    absent."""
    folder = thirdparty_crds_dir(progress=lambda _m: None)
    if not (folder / file).is_file():
        pytest.fail(f"{file} is not in {folder}, the folder of the upstream CRDs")
    return folder / file


def resolve_env(
    container: dict[str, Any],
    secret_value: Callable[[str, str], str],
    fields: dict[str, str] | None = None,
) -> dict[str, str]:
    """A rendered container's env as the kubelet resolves it: values, each secretKeyRef
    (Secret name, key) looked up with `secret_value`, each fieldRef (the downward API) from
    `fields` by its fieldPath (a path it lacks fails the test)."""
    out = {}
    for e in container.get("env", []):
        if "value" in e:
            out[e["name"]] = e["value"]
        elif "fieldRef" in e["valueFrom"]:
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            assert path in (fields or {}), f"{e['name']}: no value for {path}"
            out[e["name"]] = (fields or {})[path]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            out[e["name"]] = secret_value(ref["name"], ref["key"])
    return out


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    """An rtml resource's status condition of `type_` ({} when the resource or it is absent)."""
    return dict(get_condition(((obj or {}).get("status") or {}).get("conditions"), type_) or {})


def wait_for(
    fn: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2, what: str = "condition"
) -> Any:
    """Poll until fn() returns something truthy; fail with what we waited for."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


class Kube:
    """A small facade over the operator's own KubeClient, with test-friendly call shapes."""

    def __init__(self, api_client: Any) -> None:
        from rtml.operator.client import KubeClient

        self.client = KubeClient(api_client)
        self.api = api_client
        self.dyn = self.client.dyn

    def res(self, api_version: str, kind: str) -> Any:
        return self.client._resource(api_version, kind)

    def apply(self, obj: dict[str, Any], manager: str = "rtml-tests") -> dict[str, Any]:
        return self.client.apply(obj, field_manager=manager)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        r = self.res(obj["apiVersion"], obj["kind"])
        return dict(r.create(body=obj, namespace=obj["metadata"].get("namespace")).to_dict())

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            return dict(self.res(api_version, kind).get(name=name, namespace=namespace).to_dict())
        except NotFoundError:
            return None

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> None:
        from kubernetes.dynamic.exceptions import NotFoundError

        with contextlib.suppress(NotFoundError):
            self.res(api_version, kind).delete(name=name, namespace=namespace)

    def patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str,
        body: dict[str, Any],
        subresource: str | None = None,
    ) -> None:
        r = self.res(api_version, kind)
        target = r.subresources[subresource] if subresource else r
        target.patch(
            body=body, name=name, namespace=namespace, content_type="application/merge-patch+json"
        )


def install_crd_file(kube: Kube, path: Path) -> list[str]:
    names = []
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "CustomResourceDefinition":
            kube.apply(doc, manager="rtml-tests-crds")
            names.append(doc["metadata"]["name"])
    for name in names:
        wait_for(partial(_established, kube, name), 60, what=f"CRD {name} to be established")
    return names


def _established(kube: Kube, name: str) -> bool:
    crd = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
    conds = (crd or {}).get("status", {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conds)


@pytest.fixture(scope="session")
def kube(kube_api_client: Any) -> Kube:
    return Kube(kube_api_client)


@pytest.fixture(scope="session")
def rtml_crds(kube: Kube) -> list[str]:
    names: list[str] = []
    for f in sorted((REPO / "crds").glob("*.yaml")):
        names += install_crd_file(kube, f)
    return names


@pytest.fixture(scope="session")
def kserve_crd(kube: Kube) -> str:
    """KServe's real InferenceService CRD (~2 MB, applied server-side)."""
    (name,) = install_crd_file(kube, thirdparty_crd(KSERVE_CRD))
    return name


@pytest.fixture(scope="session")
def keda_crd(kube: Kube) -> str:
    """KEDA's real ScaledObject CRD."""
    (name,) = install_crd_file(kube, thirdparty_crd("keda.scaledobjects.yaml"))
    return name


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    """A fresh namespace enforcing the Pod Security `restricted` profile."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
        }
    )
    yield name
    kube.delete("v1", "Namespace", name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """`rtml operator` as a real process against the test control plane."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.env = env or {}
        self.args = args  # more of `rtml operator`'s options, e.g. --leader-elect
        self.port = _free_port()
        self.metrics_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def liveness_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> None:
        env = rtml_env(
            RTML_RESYNC_SECONDS="3",
            RTML_DISCOVERY_TTL="1",
            RTML_KSERVE_POLL_SECONDS="1",
            RTML_EXPERIMENT_TICK_SECONDS="1",
            # Nothing listens there: an API-only cluster has no Prometheus (analysis pauses).
            RTML_PROMETHEUS_URL="http://127.0.0.1:9",
            RTML_RUNTIME_IMAGE="registry.local/rtml-runtime:test",
            RTML_METRICS_PORT=str(self.metrics_port),
            **self.env,
        )
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rtml.cli",
                "operator",
                "--kubeconfig",
                str(self.kubeconfig),
                "--liveness",
                self.liveness_url,
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        import urllib.request

        def alive() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"the operator exited with {self.proc.returncode}; see {self.log_path}")
            with urllib.request.urlopen(self.liveness_url, timeout=2) as r:  # noqa: S310
                return bool(r.status == 200)

        wait_for(alive, 60, 0.3, "the operator's liveness endpoint")

    def kill(self) -> None:
        """SIGKILL: no chance to finish what it was doing (a crash, an OOM kill)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def operator(
    control_plane: Any,
    rtml_crds: list[str],
    kserve_crd: str,
    postgres_server: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """The operator configured as in a cluster: a PostgreSQL SQL registry, a Redis online store.

    Its redis-server is its own: test_runtime.py SIGSTOPs the session `redis_server`, which
    would stall the operator's registrations.
    """
    LOGS.mkdir(exist_ok=True)
    feast = tmp_path_factory.mktemp("operator-feast")
    redis = RedisServer(tmp_path_factory.mktemp("operator-redis"))
    redis.start()
    env = {
        "RTML_FEAST_STORE": "redis",
        "RTML_FEAST_REDIS_URL": redis.url,
        "RTML_FEAST_PATH": str(feast / "store"),
        "RTML_FEAST_REGISTRY": postgres_server.url("feast"),
        # The registry URL is a credential: pods get it from this Secret (by reference).
        "RTML_FEAST_SECRET": "feast-credentials",
        # The signature check may download from servers the tests start on this machine
        # (named exactly: a loopback address needs that; tests/integration/test_artifact_fetch.py).
        "RTML_ARTIFACT_FETCH_HOSTS": '["127.0.0.1"]',
    }
    op = OperatorProcess(Path(control_plane.kubeconfig), LOGS / "operator.log", env)
    op.log_path.write_bytes(b"")
    try:
        op.start()
        yield op
    finally:
        op.stop()
        redis.stop()
