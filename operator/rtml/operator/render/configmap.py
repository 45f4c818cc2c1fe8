"""The ConfigMap holding the resolved Model spec that the runtime reads at start-up."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from rtml.api.model import Model
from rtml.operator.render.meta import CONFIG_KEY, config_map_name, object_meta


def resolved_config(model: Model) -> str:
    """The spec with every default filled in, as stable JSON (the runtime's config file)."""
    body = {
        "name": model.metadata.name,
        "namespace": model.metadata.namespace,
        "spec": model.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    return json.dumps(body, sort_keys=True, indent=1)


def config_checksum(model: Model) -> str:
    return hashlib.sha256(resolved_config(model).encode()).hexdigest()


def render_config_map(model: Model) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(model, config_map_name(model)),
        "data": {CONFIG_KEY: resolved_config(model)},
    }
