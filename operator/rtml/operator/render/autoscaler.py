"""The autoscaler of a bentoml-backend Model: an HPA (autoscaling/v2) or a KEDA ScaledObject.

`cpu` is an HPA on resource metrics (metrics-server). `concurrency`, `rps` and `p99Latency` come
from Prometheus: a KEDA ScaledObject with a Prometheus trigger when KEDA's CRD is installed,
else an HPA on Pods metrics that prometheus-adapter serves with the rules the chart ships
(charts/rtml/files/prometheus-adapter-rules.yaml; the metric names below are theirs).
Scale-down waits for `scale_down_stabilization_seconds` of lower recommendations (operator
setting, default 300 s, the HPA's own default made explicit): a burst is not followed by a
flap. docs/autoscaling.md.
"""

from __future__ import annotations

from typing import Any

from rtml.api.model import Model
from rtml.operator.render.context import RenderContext
from rtml.operator.render.deployment import autoscaler_owns_replicas
from rtml.operator.render.meta import object_meta

KEDA_METRICS = ("concurrency", "rps", "p99Latency")
# The Pods metrics prometheus-adapter serves (its rules in the chart compute the last two).
ADAPTER_METRICS = {
    "concurrency": "rtml_concurrency",
    "rps": "rtml_requests_per_second",
    "p99Latency": "rtml_request_p99_latency_ms",
}
# Requests in flight per pod, by Little's law over the runtime's own request time: one event
# loop serving CPU-bound requests is saturated near 1 (queueing before a request reaches the
# handler is not counted), so the default scales out at half a loop. Measured on the local node:
# 0.13-0.34 per pod under a load that took `cpu` and `rps` Models to 3 pods; ~0.002 at 5 req/s.
DEFAULT_CONCURRENCY = 0.5
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
    metric = model.spec.autoscaling.metric
    if metric == "rps":
        return f"sum(rate(rtml_requests_total{{{sel}}}[1m]))"
    if metric == "concurrency":
        # Requests in flight averaged over a minute (Knative's stable window), by Little's law:
        # seconds of requests served per second. The rtml_inflight_requests gauge reads ~0 at
        # every scrape, which the same event loop answers between requests.
        return f"sum(rate(rtml_request_duration_seconds_sum{{{sel}}}[1m]))"
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
    # Per-pod custom metrics, served by prometheus-adapter from the runtime's /metrics.
    name = ADAPTER_METRICS[metric]
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": name},
            "target": {"type": "AverageValue", "averageValue": _quantity(target)},
        },
    }


def behavior(ctx: RenderContext) -> dict[str, Any]:
    """Scale up as fast as the HPA allows; scale down to the highest recommendation of the
    stabilization window (the HPA's own rule, with the window the operator is set to)."""
    return {"scaleDown": {"stabilizationWindowSeconds": ctx.scale_down_stabilization_seconds}}


def render_hpa(model: Model, ctx: RenderContext) -> dict[str, Any]:
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
            "behavior": behavior(ctx),
        },
    }


def render_scaled_object(model: Model, ctx: RenderContext) -> dict[str, Any]:
    a = model.spec.autoscaling
    per_replica = a.metric != "p99Latency"
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
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior(ctx)}},
            "triggers": [
                {
                    "type": "prometheus",
                    # Load is shared out per replica; p99 is a property of the whole Model.
                    "metricType": "AverageValue" if per_replica else "Value",
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
    return render_hpa(model, ctx)
