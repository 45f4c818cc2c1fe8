"""The autoscaler of a bentoml-backend Model: an HPA (autoscaling/v2) or a KEDA ScaledObject.

KEDA is chosen when its CRD is installed and the metric is one only Prometheus can answer
(`rps`, `p99Latency`); `cpu` and `concurrency` stay on a plain HPA, which needs no extra
component for `cpu` and a custom-metrics adapter for `concurrency`.
"""

from __future__ import annotations

from typing import Any

from rtml.api.model import Model
from rtml.operator.render.context import RenderContext
from rtml.operator.render.deployment import autoscaler_owns_replicas
from rtml.operator.render.meta import object_meta

KEDA_METRICS = ("rps", "p99Latency")
DEFAULT_CONCURRENCY = 4.0
DEFAULT_RPS = 200.0
DEFAULT_CPU_PERCENT = 70.0
P99_HEADROOM = 0.8  # scale out before the SLO is hit, not after


def target_value(model: Model) -> float:
    a = model.spec.autoscaling
    if a.target is not None:
        return a.target
    return {
        "concurrency": DEFAULT_CONCURRENCY,
        "rps": DEFAULT_RPS,
        "cpu": DEFAULT_CPU_PERCENT,
        "p99Latency": model.spec.slo.p99_latency_ms * P99_HEADROOM,
    }[a.metric]


def uses_keda(model: Model, ctx: RenderContext) -> bool:
    return ctx.keda_installed and model.spec.autoscaling.metric in KEDA_METRICS


def _quantity(value: float) -> str:
    """A Kubernetes quantity: whole numbers as-is, fractions in milli-units."""
    return str(int(value)) if float(value).is_integer() else f"{round(value * 1000)}m"


def prometheus_query(model: Model) -> str:
    sel = f'namespace="{model.metadata.namespace}",model="{model.metadata.name}"'
    if model.spec.autoscaling.metric == "rps":
        return f"sum(rate(rtml_requests_total{{{sel}}}[1m]))"
    return (
        "1000 * histogram_quantile(0.99, sum by (le) "
        f"(rate(rtml_request_duration_seconds_bucket{{{sel}}}[2m])))"
    )


def _hpa_metric(model: Model) -> dict[str, Any]:
    metric = model.spec.autoscaling.metric
    target = target_value(model)
    if metric == "cpu":
        return {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": round(target)},
            },
        }
    # Per-pod custom metrics, served by a custom-metrics adapter from the runtime's /metrics.
    name = {
        "concurrency": "rtml_inflight_requests",
        "rps": "rtml_requests_per_second",
        "p99Latency": "rtml_request_p99_latency_ms",
    }[metric]
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": name},
            "target": {"type": "AverageValue", "averageValue": _quantity(target)},
        },
    }


def render_hpa(model: Model) -> dict[str, Any]:
    a = model.spec.autoscaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": object_meta(model),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": model.metadata.name,
            },
            "minReplicas": a.min_replicas,
            "maxReplicas": a.max_replicas,
            "metrics": [_hpa_metric(model)],
        },
    }


def render_scaled_object(model: Model, ctx: RenderContext) -> dict[str, Any]:
    a = model.spec.autoscaling
    rps = a.metric == "rps"
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": object_meta(model),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": model.metadata.name,
            },
            "minReplicaCount": a.min_replicas,
            "maxReplicaCount": a.max_replicas,
            "triggers": [
                {
                    "type": "prometheus",
                    # rps is shared out per replica; p99 is a property of the whole Model.
                    "metricType": "AverageValue" if rps else "Value",
                    "metadata": {
                        "serverAddress": ctx.prometheus_url,
                        "query": prometheus_query(model),
                        "threshold": f"{target_value(model):g}",
                    },
                }
            ],
        },
    }


def render_autoscaler(model: Model, ctx: RenderContext) -> dict[str, Any] | None:
    """The autoscaler for the Model, or None when min == max (nothing to scale)."""
    if not autoscaler_owns_replicas(model):
        return None
    if uses_keda(model, ctx):
        return render_scaled_object(model, ctx)
    return render_hpa(model)
