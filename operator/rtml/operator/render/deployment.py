"""The bentoml backend's Deployment: the rtml runtime pods."""

from __future__ import annotations

from typing import Any

from rtml.api.model import Model
from rtml.contract import HTTP_PORT
from rtml.operator.render.configmap import config_checksum
from rtml.operator.render.container import (
    POD_SECURITY_CONTEXT,
    render_runtime_container,
    runtime_volumes,
)
from rtml.operator.render.context import RenderContext
from rtml.operator.render.meta import (
    config_map_name,
    labels,
    object_meta,
    selector_labels,
    traffic_config_map_name,
)

CHECKSUM_ANNOTATION = "rtml.dev/config-checksum"


def autoscaler_owns_replicas(model: Model) -> bool:
    """With min == max there is nothing to scale, so no autoscaler and a fixed replica count."""
    a = model.spec.autoscaling
    return a.min_replicas < a.max_replicas


def render_deployment(
    model: Model, ctx: RenderContext, feature_view: dict[str, Any] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(model)},
        "revisionHistoryLimit": 5,
        # Never below capacity during a rollout: a latency SLO has no room for a missing pod.
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        },
        "template": {
            "metadata": {
                "labels": labels(model),
                "annotations": {
                    CHECKSUM_ANNOTATION: config_checksum(model, feature_view),
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(HTTP_PORT),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": {
                "automountServiceAccountToken": False,
                "securityContext": dict(POD_SECURITY_CONTEXT),
                "terminationGracePeriodSeconds": 30,
                "containers": [render_runtime_container(model, ctx, feature_view)],
                "volumes": runtime_volumes(config_map_name(model), traffic_config_map_name(model)),
            },
        },
    }
    if model.spec.runtime.service_account_name:
        spec["template"]["spec"]["serviceAccountName"] = model.spec.runtime.service_account_name
    if not autoscaler_owns_replicas(model):
        # Only written when no autoscaler exists: a field the operator applies is a field it
        # owns, and it would fight the HPA/KEDA over it on every reconcile.
        spec["replicas"] = model.spec.autoscaling.min_replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(model),
        "spec": spec,
    }
