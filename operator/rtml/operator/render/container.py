"""The rtml runtime container, shared by the bentoml Deployment and the KServe predictor.

Its argv, environment names, mounts, port and probe paths are the contract's (rtml.contract);
tests/integration/test_contract.py starts exactly what this renders.
"""

from __future__ import annotations

from typing import Any

from rtml.api.model import Model
from rtml.contract import (
    ARTIFACT_DIR,
    CONFIG_MOUNT,
    ENV_AUDIT_REDIS_URL,
    ENV_PUSH_TOKEN,
    HTTP_PORT,
    LIVE_PATH,
    READY_PATH,
    RUNTIME_UID,
    TMP_DIR,
    TRAFFIC_MOUNT,
    feast_env,
    runtime_args,
    secret_key_env,
)
from rtml.operator.render.context import RenderContext

DEFAULT_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "512Mi"},
    "limits": {"memory": "1Gi"},
}
# Pod Security Standards "restricted": non-root, no privilege escalation, no capabilities,
# the runtime's default seccomp profile. The root filesystem is read-only too; the runtime
# writes only to the emptyDir volumes mounted below.
CONTAINER_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": RUNTIME_UID,
    "runAsGroup": RUNTIME_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
POD_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": RUNTIME_UID,
    "runAsGroup": RUNTIME_UID,
    "fsGroup": RUNTIME_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}


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


def runtime_env(
    model: Model, ctx: RenderContext, feature_view: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The Feast profile when the Model reads a view (credentials as secretKeyRefs; the SQL
    registry only for a push view, whose rows the runtime writes through Feast), the push
    token for a push view when the operator names its Secret, the audit Redis's URL for an
    audited Model when it names that one's, then the Model's own `spec.runtime.env`."""
    env: list[dict[str, Any]] = []
    if feature_view is not None:
        source = (feature_view.get("spec") or {}).get("source") or {}
        push = source.get("type") == "push"
        env += feast_env(ctx.feast, ctx.feast_secret, registry=push)
        if push and ctx.push_token_secret:
            env.append(
                secret_key_env(ENV_PUSH_TOKEN, ctx.push_token_secret, ctx.push_token_secret_key)
            )
    return env + audit_env(model, ctx) + own_env(model)


def audit_env(model: Model, ctx: RenderContext) -> list[dict[str, Any]]:
    """RTML_AUDIT_REDIS_URL from the operator's audit Secret, for a Model with spec.audit
    (unless its own spec.runtime.env sets the variable)."""
    if model.spec.audit is None or not ctx.audit_secret:
        return []
    if any(e.name == ENV_AUDIT_REDIS_URL for e in model.spec.runtime.env):
        return []
    return [secret_key_env(ENV_AUDIT_REDIS_URL, ctx.audit_secret, ctx.audit_secret_key)]


def own_env(model: Model) -> list[dict[str, Any]]:
    """The Model's own spec.runtime.env, last."""
    return [{"name": e.name, "value": e.value} for e in model.spec.runtime.env]


# How long a terminating runtime keeps serving before SIGTERM: kube-proxy has to have dropped
# its endpoint by then. On the 2-core CI node kube-proxy took up to 4-5 s for 1 in 30 endpoint
# changes during the autoscaling test, and with 5 s a CI run of that test had one request
# refused (when in the ramp was not recorded then; the test says now). 10 s is twice the slowest
# seen, and leaves 20 s of the pod's 30 s grace for the drain.
PRESTOP_SLEEP_SECONDS = 10


def render_runtime_container(
    model: Model,
    ctx: RenderContext,
    feature_view: dict[str, Any] | None = None,
    name: str = "runtime",
) -> dict[str, Any]:
    # Warm-up and an artifact download can take a while: the startup probe allows ~2 minutes
    # before liveness applies, so a slow start is not mistaken for a hung process.
    return {
        "name": name,
        "image": model.spec.runtime.image or ctx.runtime_image,
        # No `command`: the image's ENTRYPOINT is the contract's RUNTIME_ENTRYPOINT.
        "args": runtime_args(),
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "env": runtime_env(model, ctx, feature_view),
        "resources": resources(model),
        # Probe timeouts above Kubernetes' 1 s: on a node whose CPU is contended a busy Python
        # process answered its probes in 1-3 s for minutes (CI, two cores), and liveness then
        # restarted a pod that was serving, whose restart took the CPU the others needed.
        "startupProbe": {
            **_http_get(READY_PATH),
            "periodSeconds": 2,
            "failureThreshold": 60,
            "timeoutSeconds": 2,
        },
        "readinessProbe": {
            **_http_get(READY_PATH),
            "periodSeconds": 5,
            "failureThreshold": 2,
            "timeoutSeconds": 3,
        },
        # A hung process gets no 30 s of grace: 10 s after liveness gives up it is killed. A
        # slow one is not hung: 5 s to answer, three times in a row, before it is restarted.
        "livenessProbe": {
            **_http_get(LIVE_PATH),
            "periodSeconds": 10,
            "failureThreshold": 3,
            "timeoutSeconds": 5,
            "terminationGracePeriodSeconds": 10,
        },
        # Endpoints and kube-proxy learn of a terminating pod a moment after the kubelet does:
        # keep serving a while before SIGTERM so no request is routed to a closed port.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        # A runtime that exits on an error (a digest mismatch, a bad config) has the kubelet
        # put its log tail into lastState.terminated.message, where the operator reads why.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            # Its own volume, never subPath: the kubelet swaps the files in place on a change.
            {"name": "traffic", "mountPath": TRAFFIC_MOUNT, "readOnly": True},
            {"name": "artifacts", "mountPath": ARTIFACT_DIR},
            {"name": "tmp", "mountPath": TMP_DIR},
        ],
    }


def runtime_volumes(config_map: str, traffic_config_map: str | None) -> list[dict[str, Any]]:
    """The config, the traffic plan (None: a pod that follows none, a stream consumer), the
    artifacts and /tmp."""
    volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": config_map}}]
    if traffic_config_map is not None:
        # Optional: a missing plan means champion only, and never holds a pod in ContainerCreating.
        volumes.append(
            {"name": "traffic", "configMap": {"name": traffic_config_map, "optional": True}}
        )
    return [
        *volumes,
        {"name": "artifacts", "emptyDir": {"sizeLimit": "2Gi"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
    ]
