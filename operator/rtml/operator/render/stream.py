"""spec.stream's Deployment: pods that run `rtml stream` on the Model (docs/streaming.md).

They are the runtime image with the contract's `stream_args`, the same resolved config, Feast
profile and `spec.runtime` as the predictor pods, and labels of their own (component
`stream`), so the predictor's Service, PodDisruptionBudget and autoscaler never count them.
They score with the champion only: an Experiment's traffic split is the HTTP path's.
tests/integration/test_contract.py (on the host) and test_node.py (as a pod) start exactly what
this renders.
"""

from __future__ import annotations

from typing import Any

from rtml.api.model import Model, StreamConsumer
from rtml.contract import (
    ARTIFACT_DIR,
    CONFIG_MOUNT,
    STREAM_METRICS_PORT,
    TMP_DIR,
    feast_env,
    stream_args,
)
from rtml.operator.render.configmap import config_checksum
from rtml.operator.render.container import (
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    audit_env,
    own_env,
    resources,
    runtime_volumes,
)
from rtml.operator.render.context import RenderContext
from rtml.operator.render.deployment import CHECKSUM_ANNOTATION
from rtml.operator.render.meta import MODEL_LABEL, config_map_name, labels, object_meta

COMPONENT = "stream"


def stream_deployment_name(model: Model) -> str:
    return f"{model.metadata.name}-stream"


def stream_selector_labels(model: Model) -> dict[str, str]:
    return {MODEL_LABEL: model.metadata.name, "app.kubernetes.io/component": COMPONENT}


def stream_args_of(model: Model, s: StreamConsumer) -> list[str]:
    """The contract's argv, `rtml stream`'s own defaults written out (input, group, output)."""
    name = model.metadata.name
    return stream_args(
        s.input or f"rtml:{name}:events",
        s.group or f"rtml-{name}",
        s.output or f"rtml:{name}:results",
    )


def stream_env(model: Model, ctx: RenderContext) -> list[dict[str, Any]]:
    """The Feast profile always (the windows and the streams live in its Redis), never the
    SQL registry, the audit Redis's URL as the predictor gets it, then the Model's own
    `spec.runtime.env`."""
    env = feast_env(ctx.feast, ctx.feast_secret, registry=False)
    return env + audit_env(model, ctx) + own_env(model)


def render_stream_container(
    model: Model, ctx: RenderContext, stream: StreamConsumer
) -> dict[str, Any]:
    metrics = {"httpGet": {"path": "/metrics", "port": STREAM_METRICS_PORT}}
    return {
        "name": COMPONENT,
        "image": model.spec.runtime.image or ctx.runtime_image,
        "args": stream_args_of(model, stream),
        "ports": [{"name": "metrics", "containerPort": STREAM_METRICS_PORT, "protocol": "TCP"}],
        "env": stream_env(model, ctx),
        "resources": resources(model),
        # The metrics endpoint answers once the model is loaded and the group joined; a
        # consumer that stops answering it is restarted (its pending entries are reclaimed).
        "startupProbe": {
            **metrics,
            "periodSeconds": 2,
            "failureThreshold": 60,
            "timeoutSeconds": 2,
        },
        "livenessProbe": {
            **metrics,
            "periodSeconds": 10,
            "failureThreshold": 3,
            "timeoutSeconds": 5,
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "artifacts", "mountPath": ARTIFACT_DIR},
            {"name": "tmp", "mountPath": TMP_DIR},
        ],
    }


def render_stream_deployment(
    model: Model, ctx: RenderContext, feature_view: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The consumers' Deployment, or None without spec.stream."""
    stream = model.spec.stream
    if stream is None:
        return None
    pod_labels = {**labels(model), **stream_selector_labels(model)}
    template_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": dict(POD_SECURITY_CONTEXT),
        "terminationGracePeriodSeconds": 30,
        "containers": [render_stream_container(model, ctx, stream)],
        "volumes": runtime_volumes(config_map_name(model), None),
    }
    if model.spec.runtime.service_account_name:
        template_spec["serviceAccountName"] = model.spec.runtime.service_account_name
    meta = object_meta(model, name=stream_deployment_name(model))
    meta["labels"] = pod_labels
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": stream.replicas,
            "selector": {"matchLabels": stream_selector_labels(model)},
            "revisionHistoryLimit": 5,
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        CHECKSUM_ANNOTATION: config_checksum(model, feature_view),
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(STREAM_METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": template_spec,
            },
        },
    }
