"""The ConfigMap holding the resolved Model spec that the runtime reads at start-up."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from rtml.api.model import Model
from rtml.api.traffic import TrafficPlan, plan_json
from rtml.contract import CONFIG_KEY, TRAFFIC_KEY
from rtml.operator.render.meta import config_map_name, object_meta, traffic_config_map_name


def resolved_config(model: Model, feature_view: dict[str, Any] | None = None) -> str:
    """The spec with every default filled in, as stable JSON (the runtime's config file).

    The FeatureView the Model reads travels with it (metadata name and spec only), so a pod
    needs no API access, and a change of the view rolls the pods through the checksum.
    """
    body: dict[str, Any] = {
        "name": model.metadata.name,
        "namespace": model.metadata.namespace,
        "spec": model.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    if feature_view is not None:
        body["featureView"] = {
            "apiVersion": feature_view.get("apiVersion", "rtml.dev/v1alpha1"),
            "kind": "FeatureView",
            "metadata": {"name": feature_view["metadata"]["name"]},
            "spec": feature_view["spec"],
        }
    return json.dumps(body, sort_keys=True, indent=1)


def config_checksum(model: Model, feature_view: dict[str, Any] | None = None) -> str:
    return hashlib.sha256(resolved_config(model, feature_view).encode()).hexdigest()


def render_config_map(model: Model, feature_view: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(model, config_map_name(model)),
        "data": {CONFIG_KEY: resolved_config(model, feature_view)},
    }


def render_traffic_config_map(model: Model, plan: TrafficPlan) -> dict[str, Any]:
    """The traffic plan the pods follow (rtml.api.traffic). Not part of the config checksum:
    a new weight must reach running pods without restarting them."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(model, traffic_config_map_name(model)),
        "data": {TRAFFIC_KEY: plan_json(plan)},
    }
