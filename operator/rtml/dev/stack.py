"""What the local cluster runs besides rtml's chart, as a platform team would set it up: the demo
installs it, and the node tests install the same (tests/integration/test_node.py).

- A tenant namespace and the operator's, both enforcing Pod Security `restricted`.
- A Secret in each with the Redis password and the SQL registry's URL (the chart's
  `feast.existingSecret`): the only place the credentials are written.
- Redis (the image `rtml dev images build` makes) requiring that password.
- The offline data and the model artifacts: a host folder as a PersistentVolume (the node is
  this machine), claimed in the tenant namespace, mounted by the materialization Job (chart
  values `materialization.*`) and served over HTTP inside the cluster by an artifact server.
- The chart's values pointing the operator at all of it.

The registry itself is a PostgreSQL outside the cluster (rtml.dev.postgres), as a managed
database would be, reached by the pods through the node's address.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rtml.dev.errors import DevError

RESTRICTED_NS = {"pod-security.kubernetes.io/enforce": "restricted"}
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                      "readOnlyRootFilesystem": True}  # fmt: skip
OFFLINE_MOUNT = "/data"  # where the Job and the artifact server see the offline volume
ARTIFACT_PORT = 8000


@dataclass(frozen=True)
class Stack:
    tenant: str = "shop"
    system: str = "rtml-system"
    secret: str = "feast-credentials"  # noqa: S105 - the Secret's name
    claim: str = "offline-data"

    @property
    def redis_url(self) -> str:
        return f"redis://redis.{self.tenant}.svc.cluster.local:6379/0"

    @property
    def artifacts_url(self) -> str:
        return f"http://models.{self.tenant}.svc.cluster.local:{ARTIFACT_PORT}"

    def manifests(
        self, *, redis_password: str, registry_url: str, offline: Path, images: dict[str, str]
    ) -> list[dict[str, Any]]:
        """Namespaces, Secrets, Redis, the offline volume and the artifact server."""
        docs: list[dict[str, Any]] = []
        for ns in (self.system, self.tenant):
            docs += [
                {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": ns, "labels": RESTRICTED_NS}},
                {"apiVersion": "v1", "kind": "Secret",
                 "metadata": {"name": self.secret, "namespace": ns},
                 "stringData": {"redis-password": redis_password, "registry": registry_url}},
            ]  # fmt: skip
        return docs + self._redis(images["redis"]) + self._offline(offline, images["runtime"])

    def _redis(self, image: str) -> list[dict[str, Any]]:
        password = {"secretKeyRef": {"name": self.secret, "key": "redis-password"}}
        return [
            {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "redis", "namespace": self.tenant, "labels": {"app": "redis"}},
             "spec": {"securityContext": POD_SECURITY, "containers": [
                 {"name": "redis", "image": image, "imagePullPolicy": "Never",
                  # The kubelet expands $(REDIS_PASSWORD): the spec holds only the reference.
                  "args": ["--requirepass", "$(REDIS_PASSWORD)", "--save", "", "--appendonly",
                           "no", "--bind", "0.0.0.0", "--port", "6379"],  # noqa: S104 - a pod
                  "env": [{"name": "REDIS_PASSWORD", "valueFrom": password}],
                  "ports": [{"containerPort": 6379}], "securityContext": CONTAINER_SECURITY,
                  "readinessProbe": {"tcpSocket": {"port": 6379}, "periodSeconds": 1}}]}},
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "redis", "namespace": self.tenant},
             "spec": {"selector": {"app": "redis"}, "ports": [{"port": 6379}]}},
        ]  # fmt: skip

    def _offline(self, folder: Path, runtime_image: str) -> list[dict[str, Any]]:
        volume = {"persistentVolumeClaim": {"claimName": self.claim, "readOnly": True}}
        return [
            {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": self.claim},
             "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                      "storageClassName": "", "persistentVolumeReclaimPolicy": "Retain",
                      "hostPath": {"path": str(folder), "type": "Directory"}}},
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": self.claim, "namespace": self.tenant},
             "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "",
                      "volumeName": self.claim, "resources": {"requests": {"storage": "1Gi"}}}},
            # The artifact server: the runtime image's Python serving the same volume.
            {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "models", "namespace": self.tenant, "labels": {"app": "models"}},
             "spec": {"securityContext": POD_SECURITY, "containers": [
                 {"name": "http", "image": runtime_image, "imagePullPolicy": "Never",
                  "command": ["python3", "-m", "http.server", str(ARTIFACT_PORT),
                              "--directory", OFFLINE_MOUNT],
                  "securityContext": CONTAINER_SECURITY,
                  "ports": [{"containerPort": ARTIFACT_PORT}],
                  "readinessProbe": {"tcpSocket": {"port": ARTIFACT_PORT}, "periodSeconds": 1},
                  "volumeMounts": [{"name": "offline", "mountPath": OFFLINE_MOUNT,
                                    "readOnly": True}]}],
                 "volumes": [{"name": "offline", **volume}]}},
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "models", "namespace": self.tenant},
             "spec": {"selector": {"app": "models"}, "ports": [{"port": ARTIFACT_PORT}]}},
        ]  # fmt: skip

    def chart_values(self, resync_seconds: int = 10) -> dict[str, Any]:
        volume = {"persistentVolumeClaim": {"claimName": self.claim, "readOnly": True}}
        return {
            "resyncSeconds": resync_seconds,
            "feast": {"onlineStore": "redis", "existingSecret": self.secret,
                      "redisUrl": self.redis_url},
            "materialization": {
                "volumes": [{"name": "offline", **volume}],
                "volumeMounts": [{"name": "offline", "mountPath": OFFLINE_MOUNT,
                                  "readOnly": True}]},
        }  # fmt: skip

    def fraud(self, manifest: Path, artifact: str, sha256: str, **model_spec: Any) -> list[Any]:
        """examples/fraud/model.yaml for this cluster: the view reads the offline volume, the
        Model its artifact from the artifact server (`artifact`: a file in the offline folder).
        One replica; the feature budget allows for a whole cluster sharing two cores."""
        docs = list(yaml.safe_load_all(manifest.read_text()))
        for d in docs:
            d["metadata"]["namespace"] = self.tenant
            if d["kind"] == "FeatureView":
                d["spec"]["source"]["path"] = f"file://{OFFLINE_MOUNT}/features.parquet"
            else:
                spec = d["spec"]
                spec["artifact"] = {"uri": f"{self.artifacts_url}/{artifact}", "sha256": sha256}
                spec["autoscaling"] = {"minReplicas": 1, "maxReplicas": 1}
                spec["slo"].update({"featureBudgetMs": 100, "timeoutMs": 500})
                spec.update(model_spec)
        return docs


def helm_install(
    helm: Path, kubectl: Path, kubeconfig: Path, chart: Path, values: Path, namespace: str
) -> None:
    """`helm install rtml` and wait for the operator; on failure, say why with its log tail."""
    installed = subprocess.run(
        [str(helm), f"--kubeconfig={kubeconfig}", "install", "rtml", str(chart),
         "--namespace", namespace, "--wait", "--timeout", "5m", "-f", str(values)],
        check=False, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    if installed.returncode == 0:
        return
    logs = subprocess.run(
        [str(kubectl), f"--kubeconfig={kubeconfig}", "-n", namespace, "logs",
         "deploy/rtml-operator", "--tail=30"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    raise DevError(
        f"helm install failed: {installed.stderr.strip()}\n"
        f"the operator's log:\n{logs.stdout}{logs.stderr}"
    )
