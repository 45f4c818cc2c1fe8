"""Builders for unit tests."""

from __future__ import annotations

from typing import Any

from rtml.api.model import Model

DIGEST = "a" * 64


def model(name: str = "fraud", **spec: Any) -> Model:
    body: dict[str, Any] = {
        "version": "v1",
        "artifact": {"uri": "s3://bucket/m.onnx", "sha256": DIGEST},
    }
    body.update(spec)
    return Model.model_validate(
        {
            "metadata": {"name": name, "namespace": "ml", "uid": "uid-1", "generation": 3},
            "spec": body,
        }
    )
