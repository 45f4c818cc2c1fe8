"""FeaturesResolved on a real API server: a mismatch blocks the rollout; a fixed view unblocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.kube import Kube, OperatorProcess, wait_for
from tests.unit.runtime.onnx_fixtures import write_sum_model

pytestmark = pytest.mark.apiserver
MODEL = ("rtml.dev/v1alpha1", "Model")
VIEW = ("rtml.dev/v1alpha1", "FeatureView")


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


def view(ns: str, a_dtype: str) -> dict[str, Any]:
    return {"apiVersion": "rtml.dev/v1alpha1", "kind": "FeatureView",
            "metadata": {"name": "cards", "namespace": ns},
            "spec": {"entity": {"name": "card", "joinKey": "card_id"},
                     "features": [{"name": "a", "dtype": a_dtype}, {"name": "b", "dtype": "FLOAT"}],
                     "source": {"type": "push"}}}  # fmt: skip


def test_mismatch_blocks_rollout_until_the_view_is_fixed(
    kube: Kube, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    onnx_path = write_sum_model(tmp_path / "m.onnx", ["a", "b", "amount"])
    kube.create(view(namespace, "STRING"))
    features = {"featureViewRef": "cards", "requestFeatures": ["amount"]}
    kube.create({"apiVersion": "rtml.dev/v1alpha1", "kind": "Model",
                 "metadata": {"name": "sig", "namespace": namespace},
                 "spec": {"version": "v1", "artifact": {"uri": f"file://{onnx_path}"},
                          "features": features}})  # fmt: skip
    m = wait_for(lambda: (o := kube.get(*MODEL, "sig", namespace))
                 and condition(o, "FeaturesResolved").get("status") == "False" and o,
                 30, what="FeaturesResolved=False")  # fmt: skip
    resolved = condition(m, "FeaturesResolved")
    assert resolved["reason"] == "SignatureMismatch"
    assert "'a'" in resolved["message"]
    assert condition(m, "Ready")["status"] == "False"
    assert kube.get("apps/v1", "Deployment", "sig", namespace) is None  # nothing rolled out

    kube.patch(*VIEW, "cards", namespace, {"spec": {"features": [
        {"name": "a", "dtype": "FLOAT"}, {"name": "b", "dtype": "FLOAT"}]}})  # fmt: skip
    wait_for(lambda: kube.get("apps/v1", "Deployment", "sig", namespace), 30,
             what="the rollout to proceed once the view fits")  # fmt: skip
    wait_for(lambda: condition(kube.get(*MODEL, "sig", namespace), "FeaturesResolved").get(
        "status") in ("True", "Unknown"), 30, what="FeaturesResolved to leave False")  # fmt: skip
