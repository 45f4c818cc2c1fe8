"""Everything a Model owns, rendered in the order it is applied."""

from __future__ import annotations

from typing import Any

from rtml.api.model import Model
from rtml.api.traffic import CHAMPION_ONLY, TrafficPlan
from rtml.operator.render.autoscaler import render_autoscaler
from rtml.operator.render.configmap import render_config_map, render_traffic_config_map
from rtml.operator.render.context import RenderContext
from rtml.operator.render.deployment import render_deployment
from rtml.operator.render.inferenceservice import (
    canary_model,
    candidate_config_map_name,
    render_inference_service,
)
from rtml.operator.render.networkpolicy import render_network_policy, render_stream_network_policy
from rtml.operator.render.service import render_pdb, render_service
from rtml.operator.render.stream import render_stream_deployment, stream_selector_labels

# Every kind a Model may own: what the operator prunes from when the desired set shrinks
# (an HPA replaced by a ScaledObject, a backend switched from bentoml to kserve).
OWNED_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ConfigMap"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("serving.kserve.io/v1beta1", "InferenceService"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
)


def render_model_children(
    model: Model,
    ctx: RenderContext,
    feature_view: dict[str, Any] | None = None,
    plan: TrafficPlan = CHAMPION_ONLY,
) -> list[dict[str, Any]]:
    """The exact objects the operator applies for this Model, config first.

    `model` is what serves the champion's traffic (with a canary rollout, the Model with its
    active artifact, rollout.serving_model); `feature_view` the FeatureView the Model reads
    (as the API server returned it), whose spec travels in the resolved config; `plan` the
    running Experiment's traffic plan.
    """
    children = [render_config_map(model, feature_view), render_traffic_config_map(model, plan)]
    if model.spec.backend == "kserve":
        candidate = canary_model(model, plan)
        if candidate is not None:
            cm = render_config_map(candidate, feature_view)
            cm["metadata"]["name"] = candidate_config_map_name(model)
            children.append(cm)
        children.append(render_inference_service(model, ctx, feature_view, plan))
        return _with_stream(children, model, ctx, feature_view)
    children += [
        render_deployment(model, ctx, feature_view),
        render_service(model),
        render_pdb(model),
    ]
    autoscaler = render_autoscaler(model, ctx)
    if autoscaler is not None:
        children.append(autoscaler)
    policy = render_network_policy(model, ctx, feature_view, plan)
    if policy is not None:
        children.append(policy)
    return _with_stream(children, model, ctx, feature_view)


def _with_stream(
    children: list[dict[str, Any]],
    model: Model,
    ctx: RenderContext,
    feature_view: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """spec.stream's consumers, after what serves: whatever the backend, they run `rtml stream`
    on the runtime image."""
    stream = render_stream_deployment(model, ctx, feature_view)
    if stream is None:
        return children
    policy = render_stream_network_policy(model, ctx, stream_selector_labels(model))
    return [*children, stream, *([policy] if policy is not None else [])]
