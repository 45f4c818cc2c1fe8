"""rtml.operator.diffbase: the essence is Kopf's own, built without copying what Kopf drops."""

from __future__ import annotations

import copy
import json
from typing import Any

import kopf
import pytest

from rtml.operator.diffbase import LeanAnnotationsDiffBaseStorage, lean_body

KEY = {"prefix": "rtml.dev", "key": "last-handled-configuration"}


def model() -> dict[str, Any]:
    spec = {"artifact": {"uri": "file:///m.onnx"}, "features": {"request": ["amount"]}}
    return {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "Model",
        "metadata": {
            "name": "fraud",
            "namespace": "ml",
            "uid": "u1",
            "resourceVersion": "42",
            "generation": 3,
            "labels": {"team": "risk"},
            "annotations": {
                "rtml.dev/last-handled-configuration": json.dumps({"spec": spec}),
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "rtml.dev/reconcile": "handled",
                "example.com/owner": "risk",
            },
            "ownerReferences": [{"kind": "Team", "name": "risk", "uid": "t1"}],
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:artifact": {}}}}],
            "finalizers": ["example.com/keep"],
        },
        "spec": spec,
        "status": {"phase": "Ready", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def replica_set() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "rs", "ownerReferences": [{"kind": "Deployment", "name": "d"}]},
        "spec": {"replicas": 1},
    }


BODIES = [
    model(),
    replica_set(),
    {"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}},
    {**model(), "metadata": {"name": "bare"}},
    {k: v for k, v in model().items() if k != "status"},
]


@pytest.mark.parametrize("raw", BODIES)
@pytest.mark.parametrize("extra", [None, ["status.phase"], ["metadata.finalizers"]])
def test_the_essence_equals_kopfs_own(raw: dict[str, Any], extra: list[str] | None) -> None:
    kopfs = kopf.AnnotationsDiffBaseStorage(**KEY).build(body=kopf.Body(raw), extra_fields=extra)
    ours = LeanAnnotationsDiffBaseStorage(**KEY).build(body=kopf.Body(raw), extra_fields=extra)
    assert ours == kopfs
    assert json.dumps(ours, sort_keys=True) == json.dumps(kopfs, sort_keys=True)


def test_the_essence_shares_nothing_with_the_object() -> None:
    raw = model()
    before = copy.deepcopy(raw)
    essence = LeanAnnotationsDiffBaseStorage(**KEY).build(body=kopf.Body(raw))
    essence["spec"]["artifact"]["uri"] = "changed"
    essence["metadata"]["labels"]["team"] = "changed"
    assert raw == before


def test_the_lean_body_leaves_out_status_and_system_metadata() -> None:
    lean = dict(lean_body(kopf.Body(model())))
    assert "status" not in lean
    assert sorted(lean["metadata"]) == ["annotations", "labels", "ownerReferences"]
