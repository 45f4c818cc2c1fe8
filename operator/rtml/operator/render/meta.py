"""Names, labels and owner references shared by every child of a Model (and the owner
reference of a FeatureView's CronJob)."""

from __future__ import annotations

from typing import Any

from rtml import API_VERSION
from rtml.api.featureview import FeatureView
from rtml.api.model import Model

FIELD_MANAGER = "rtml-operator"
MODEL_LABEL = "rtml.dev/model"
MANAGED_BY = {"app.kubernetes.io/managed-by": FIELD_MANAGER}


def config_map_name(model: Model) -> str:
    return f"{model.metadata.name}-rtml-config"


def traffic_config_map_name(model: Model | str) -> str:
    """The traffic plan's ConfigMap of a Model (or of the Model of that name)."""
    name = model if isinstance(model, str) else model.metadata.name
    return f"{name}-rtml-traffic"


def selector_labels(model: Model | str) -> dict[str, str]:
    """Labels that pick the predictor pods of a Model (or of the Model of that name);
    immutable in a Deployment, so no version here."""
    name = model if isinstance(model, str) else model.metadata.name
    return {MODEL_LABEL: name, "app.kubernetes.io/component": "predictor"}


def labels(model: Model) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "rtml-runtime",
        "app.kubernetes.io/instance": model.metadata.name,
        "app.kubernetes.io/part-of": "rtml",
        **MANAGED_BY,
        **selector_labels(model),
        "rtml.dev/version": model.spec.version,
    }


def owner_reference(owner: Model | FeatureView) -> dict[str, Any]:
    """Makes the garbage collector delete a child (a Model's objects, a FeatureView's CronJob)
    with the rtml resource that owns it."""
    return {
        "apiVersion": API_VERSION,
        "kind": "Model" if isinstance(owner, Model) else "FeatureView",
        "name": owner.metadata.name,
        "uid": owner.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(model: Model, name: str | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name or model.metadata.name,
        "namespace": model.metadata.namespace,
        "labels": labels(model),
        "ownerReferences": [owner_reference(model)],
    }
    meta.update(extra)
    return meta
