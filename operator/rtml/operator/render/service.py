"""The Service in front of the runtime pods, and the PodDisruptionBudget that protects them."""

from __future__ import annotations

from typing import Any

from rtml.api.model import Model
from rtml.operator.render.context import RenderContext
from rtml.operator.render.meta import object_meta, selector_labels


def render_service(model: Model) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(model),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(model),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def service_url(model: Model, ctx: RenderContext) -> str:
    m = model.metadata
    return f"http://{m.name}.{m.namespace}.svc.{ctx.cluster_domain}"


def render_pdb(model: Model) -> dict[str, Any]:
    # maxUnavailable 1 rather than minAvailable: a one-replica Model must not block node drains.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(model),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(model)}},
    }
