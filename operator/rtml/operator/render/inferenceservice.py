"""The kserve backend: one serving.kserve.io/v1beta1 InferenceService running the rtml runtime.

Deployment mode (docs/kserve-backend.md): KServe's `Standard` (a Deployment with an HPA or KEDA,
no Knative; KServe's recommended mode, formerly `RawDeployment`) unless the Model carries
KServe's own annotation `serving.kserve.io/deploymentMode: Knative` (or the older `Serverless`).
Mapping of spec.autoscaling:
- Standard: cpu -> autoscalerClass hpa, scaleMetric cpu (Utilization); concurrency, rps and
  p99Latency -> autoscalerClass keda with an External Prometheus metric (the queries of the
  bentoml backend's ScaledObject).
- Knative: concurrency and rps -> Knative's KPA (scaleMetric), cpu -> scaleMetric cpu;
  p99Latency has no Knative scaler and stays Standard with KEDA (said in the docs).
"""

from __future__ import annotations

from typing import Any

from rtml.api.model import Model
from rtml.api.traffic import CHAMPION_ONLY, TrafficPlan
from rtml.contract import HTTP_PORT
from rtml.operator.render.autoscaler import prometheus_query, target_value
from rtml.operator.render.configmap import config_checksum
from rtml.operator.render.container import (
    POD_SECURITY_CONTEXT,
    render_runtime_container,
    runtime_volumes,
)
from rtml.operator.render.context import RenderContext
from rtml.operator.render.deployment import CHECKSUM_ANNOTATION
from rtml.operator.render.meta import config_map_name, object_meta, traffic_config_map_name

DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"
KSERVE_CONTAINER = "kserve-container"


STANDARD, KNATIVE = "Standard", "Knative"
_REQUESTED = {"Knative": KNATIVE, "Serverless": KNATIVE}  # KServe's names, the new and the old


def deployment_mode(model: Model) -> str:
    """Standard, unless the Model asks for Knative with KServe's annotation (and a metric
    Knative can scale on)."""
    asked = (model.metadata.annotations or {}).get(DEPLOYMENT_MODE, "")
    if _REQUESTED.get(asked) == KNATIVE and model.spec.autoscaling.metric != "p99Latency":
        return KNATIVE
    return STANDARD


def _annotations(model: Model, feature_view: dict[str, Any] | None) -> dict[str, str]:
    metric = model.spec.autoscaling.metric
    mode = deployment_mode(model)
    out = {
        CHECKSUM_ANNOTATION: config_checksum(model, feature_view),
        "serving.kserve.io/enable-prometheus-scraping": "true",
        "prometheus.io/port": str(HTTP_PORT),
        "prometheus.io/path": "/metrics",
        DEPLOYMENT_MODE: mode,
    }
    if mode == STANDARD:
        out[AUTOSCALER_CLASS] = "hpa" if metric == "cpu" else "keda"
    return out


def _scaling(model: Model, ctx: RenderContext) -> dict[str, Any]:
    a = model.spec.autoscaling
    out: dict[str, Any] = {"minReplicas": a.min_replicas, "maxReplicas": a.max_replicas}
    target = target_value(model)
    if a.metric == "cpu" or deployment_mode(model) == KNATIVE:
        out["scaleMetric"] = a.metric
        out["scaleTarget"] = max(1, round(target))
        if a.metric == "cpu":
            out["scaleMetricType"] = "Utilization"
        return out
    # Standard mode: KEDA on the runtime's Prometheus series. Load is shared per replica; the
    # p99 is the whole Model's.
    kind = "Value" if a.metric == "p99Latency" else "AverageValue"
    out["autoScaling"] = {
        "metrics": [
            {
                "type": "External",
                "external": {
                    "metric": {
                        "backend": "prometheus",
                        "serverAddress": ctx.prometheus_url,
                        "query": prometheus_query(model),
                    },
                    "target": {"type": kind, kind[0].lower() + kind[1:]: f"{target:g}"},
                },
            }
        ]
    }
    return out


def canary_model(model: Model, plan: TrafficPlan) -> Model | None:
    """With a running canary, the Model as its candidate: what KServe's canary revision serves
    (KServe splits by canaryTrafficPercent between revisions; not sticky, docs/experiments.md)."""
    if not plan.active or plan.strategy != "canary" or plan.candidate is None:
        return None
    return model.serving(plan.candidate.version, plan.candidate.artifact)


def candidate_config_map_name(model: Model) -> str:
    return f"{config_map_name(model)}-candidate"


def render_inference_service(
    model: Model,
    ctx: RenderContext,
    feature_view: dict[str, Any] | None = None,
    plan: TrafficPlan = CHAMPION_ONLY,
) -> dict[str, Any]:
    """`plan` with a canary running: the predictor is the candidate's (its own ConfigMap) and
    `canaryTrafficPercent` the step's weight; KServe keeps the last rolled-out revision, the
    champion, serving the rest."""
    candidate = canary_model(model, plan)
    serving = candidate or model
    config = candidate_config_map_name(model) if candidate else config_map_name(model)
    predictor: dict[str, Any] = {
        **_scaling(model, ctx),
        "automountServiceAccountToken": False,
        "securityContext": dict(POD_SECURITY_CONTEXT),
        "containers": [render_runtime_container(serving, ctx, feature_view, name=KSERVE_CONTAINER)],
        "volumes": runtime_volumes(config, traffic_config_map_name(model)),
    }
    if candidate is not None:
        predictor["canaryTrafficPercent"] = plan.weight
    if model.spec.runtime.service_account_name:
        predictor["serviceAccountName"] = model.spec.runtime.service_account_name
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": object_meta(model, annotations=_annotations(serving, feature_view)),
        "spec": {"predictor": predictor},
    }
