"""The rtml runtime container, shared by the bentoml Deployment and the KServe predictor."""

from __future__ import annotations

from typing import Any

from rtml.api.model import Model
from rtml.operator.render.context import RenderContext
from rtml.operator.render.meta import CONFIG_KEY, CONFIG_MOUNT, HTTP_PORT

DEFAULT_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "512Mi"},
    "limits": {"memory": "1Gi"},
}
# Pod Security Standards "restricted": non-root, no privilege escalation, no capabilities,
# the runtime's default seccomp profile. The root filesystem is read-only too; the runtime
# writes only to the emptyDir volumes mounted below.
RUNTIME_UID = 65532
CONTAINER_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": RUNTIME_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
POD_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": RUNTIME_UID,
    "runAsGroup": RUNTIME_UID,
    "fsGroup": RUNTIME_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"


def _http_get(path: str) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": HTTP_PORT}}


def resources(model: Model) -> dict[str, Any]:
    override = model.spec.runtime.resources
    if override is None:
        return {k: dict(v) for k, v in DEFAULT_RESOURCES.items()}
    out: dict[str, Any] = {}
    if override.requests:
        out["requests"] = dict(override.requests)
    if override.limits:
        out["limits"] = dict(override.limits)
    return out


def render_runtime_container(
    model: Model, ctx: RenderContext, name: str = "runtime"
) -> dict[str, Any]:
    env = [
        {"name": "RTML_CONFIG", "value": f"{CONFIG_MOUNT}/{CONFIG_KEY}"},
        {"name": "RTML_MODEL_NAME", "value": model.metadata.name},
        {"name": "RTML_MODEL_VERSION", "value": model.spec.version},
    ]
    env += [{"name": e.name, "value": e.value} for e in model.spec.runtime.env]
    # Warm-up and an artifact download can take a while: the startup probe allows ~2 minutes
    # before liveness applies, so a slow start is not mistaken for a hung process.
    return {
        "name": name,
        "image": model.spec.runtime.image or ctx.runtime_image,
        "args": [
            "serve",
            "--config",
            f"{CONFIG_MOUNT}/{CONFIG_KEY}",
            "--host",
            "0.0.0.0",  # noqa: S104 - inside a pod the runtime must listen on the pod IP
            "--port",
            str(HTTP_PORT),
        ],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "env": env,
        "resources": resources(model),
        "startupProbe": {**_http_get(READY_PATH), "periodSeconds": 2, "failureThreshold": 60},
        "readinessProbe": {**_http_get(READY_PATH), "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {**_http_get(LIVE_PATH), "periodSeconds": 10, "failureThreshold": 3},
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "artifacts", "mountPath": "/var/lib/rtml"},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - a private emptyDir, not /tmp of the host
        ],
    }


def runtime_volumes(config_map: str) -> list[dict[str, Any]]:
    return [
        {"name": "config", "configMap": {"name": config_map}},
        {"name": "artifacts", "emptyDir": {"sizeLimit": "2Gi"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
    ]
