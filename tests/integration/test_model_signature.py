"""FeaturesResolved on a real API server: a mismatch blocks the rollout; fixing it unblocks it.

Each case starts a Model whose ONNX inputs do not fit its features, checks the condition names
what is wrong and that nothing was rolled out, then makes the one edit that fixes it (to the
view, or to the Model where the fault is the Model's) and waits for FeaturesResolved=True and
the Deployment. The model is tests/unit/runtime/onnx_fixtures.py's sum of inputs a, b and
amount; the view, named after the namespace (one Feast registry serves every namespace),
holds a and b; amount comes with the request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.kube import Kube, OperatorProcess, condition, wait_for
from tests.unit.runtime.onnx_fixtures import write_sum_model

pytestmark = [pytest.mark.apiserver, pytest.mark.feast, pytest.mark.redis]
MODEL = ("rtml.dev/v1alpha1", "Model")
VIEW = ("rtml.dev/v1alpha1", "FeatureView")
DEPLOYMENT = ("apps/v1", "Deployment")
FITS = [{"name": "a", "dtype": "FLOAT"}, {"name": "b", "dtype": "FLOAT"}]
PUSH = {"type": "push"}
# Relative paths have no folder to be relative to in a cluster: Feast refuses the view.
UNREGISTRABLE = {"type": "file", "path": "file://data/cards.parquet"}


@dataclass(frozen=True)
class Case:
    """A Model that does not fit its features, and the edit that makes it fit."""

    reason: str
    names: str  # what the message must name; {view} is the view's name
    features: list[dict[str, Any]] | None = None  # the view's features; None: no view at first
    source: dict[str, Any] | None = None  # the view's source, default PUSH
    artifact: Literal["fits", "wide"] = "fits"  # wide: input a is [N, 3]
    request_features: tuple[str, ...] = ("amount",)
    fix_view: dict[str, Any] | None = None  # a merge patch of the view's spec
    fix_model: dict[str, Any] | None = None  # a merge patch of the Model's spec
    create_view: bool = False  # the fix is creating the view


CASES = {
    "missing-feature": Case(
        "SignatureMismatch",
        "ONNX input 'b'",
        features=FITS[:1],
        fix_view={"features": FITS},
    ),
    "wrong-dtype": Case(
        "SignatureMismatch",
        "ONNX input 'a' is float, but FeatureView '{view}' feature 'a' is STRING",
        features=[{"name": "a", "dtype": "STRING"}, FITS[1]],
        fix_view={"features": FITS},
    ),
    "wrong-shape": Case(
        "SignatureMismatch",
        "ONNX input 'a' takes 3 columns per row",
        features=FITS,
        artifact="wide",
        fix_model={"artifact": "fits"},
    ),
    "extra-request-feature": Case(
        "SignatureMismatch",
        "request feature 'channel' (spec.features.requestFeatures) is not an input",
        features=FITS,
        request_features=("amount", "channel"),
        fix_model={"features": {"requestFeatures": ["amount"]}},
    ),
    "request-feature-also-in-the-view": Case(
        "SignatureMismatch",
        "feature 'amount' is both in spec.features.requestFeatures and a feature of "
        "FeatureView '{view}'",
        features=[*FITS, {"name": "amount", "dtype": "FLOAT"}],
        fix_view={"features": FITS},
    ),
    "missing-view": Case(
        "FeatureViewNotFound",
        "FeatureView '{view}' (spec.features.featureViewRef) does not exist",
        create_view=True,
    ),
    "view-not-ready": Case(
        "FeatureViewNotReady",
        "FeatureView '{view}' is not Ready: Feast refused the view: spec.source.path",
        features=FITS,
        source=UNREGISTRABLE,
        fix_view={"source": {"path": "file:///data/cards.parquet"}},
    ),
}


def feature_view(
    ns: str, name: str, features: list[dict[str, Any]], source: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "entity": {"name": "card", "joinKey": "card_id"},
            "features": features,
            "source": {"timestampField": "event_timestamp", **(source or PUSH)},
        },
    }


def pinned(path: Path) -> dict[str, str]:
    """spec.artifact for a local file, with its digest (every scheme needs one)."""
    return {"uri": path.as_uri(), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def model(
    ns: str, artifact: dict[str, str], view: str, request_features: tuple[str, ...]
) -> dict[str, Any]:
    return {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "sig", "namespace": ns},
        "spec": {
            "version": "v1",
            "artifact": artifact,
            "features": {"featureViewRef": view, "requestFeatures": list(request_features)},
        },
    }


def features_resolved(kube: Kube, ns: str, status: str) -> dict[str, Any]:
    return dict(
        wait_for(
            lambda: (
                (m := kube.get(*MODEL, "sig", ns))
                and condition(m, "FeaturesResolved").get("status") == status
                and m
            ),
            30,
            what=f"FeaturesResolved={status}",
        )
    )


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_model_that_does_not_fit_is_held_until_it_is_fixed(
    case: Case, kube: Kube, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    inputs = ["a", "b", "amount"]
    artifacts = {
        "fits": pinned(write_sum_model(tmp_path / "fits.onnx", inputs)),
        "wide": pinned(write_sum_model(tmp_path / "wide.onnx", inputs, widths={"a": 3})),
    }
    view = f"cards-{namespace}"
    if case.features is not None:
        kube.create(feature_view(namespace, view, case.features, case.source))
        # Check against the view's verdict, not a view no reconciler has judged yet.
        wait_for(
            lambda: condition(kube.get(*VIEW, view, namespace), "Ready"),
            60,
            what="the FeatureView's Ready condition",
        )
    kube.create(model(namespace, artifacts[case.artifact], view, case.request_features))

    m = features_resolved(kube, namespace, "False")
    resolved = condition(m, "FeaturesResolved")
    assert resolved["reason"] == case.reason
    assert case.names.format(view=view) in resolved["message"]
    for held in (condition(m, "RolledOut"), condition(m, "Ready")):
        assert (held["status"], held["reason"]) == ("False", case.reason)
    assert kube.get(*DEPLOYMENT, "sig", namespace) is None  # nothing rolled out
    assert kube.get("v1", "ConfigMap", "sig-rtml-config", namespace) is None

    if case.create_view:
        kube.create(feature_view(namespace, view, FITS, PUSH))
    if case.fix_view is not None:
        kube.patch(*VIEW, view, namespace, {"spec": case.fix_view})
    if case.fix_model is not None:
        fix = dict(case.fix_model)
        if "artifact" in fix:
            fix["artifact"] = artifacts[fix["artifact"]]  # its uri and its sha256
        kube.patch(*MODEL, "sig", namespace, {"spec": fix})

    wait_for(
        lambda: kube.get(*DEPLOYMENT, "sig", namespace),
        30,
        what="the rollout to proceed once the Model fits",
    )
    resolved = condition(features_resolved(kube, namespace, "True"), "FeaturesResolved")
    assert resolved["reason"] == "SignatureMatches"
    assert f"FeatureView '{view}'" in resolved["message"]


def test_a_model_applied_with_its_view_waits_for_the_views_verdict(
    kube: Kube, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    """Applied together (kubectl apply -f dir/, a Helm release, a Git sync), the Model must not
    roll out before its view has been judged: this view turns out unregistrable."""
    artifact = pinned(write_sum_model(tmp_path / "fits.onnx", ["a", "b", "amount"]))
    view = f"cards-{namespace}"
    kube.create(model(namespace, artifact, view, ("amount",)))
    kube.create(feature_view(namespace, view, FITS, UNREGISTRABLE))
    m = features_resolved(kube, namespace, "False")
    assert condition(m, "FeaturesResolved")["reason"] == "FeatureViewNotReady"
    assert kube.get(*DEPLOYMENT, "sig", namespace) is None
    assert kube.get("v1", "ConfigMap", "sig-rtml-config", namespace) is None

    # Fixed, the view turns Ready and its event re-judges the Model: the rollout proceeds.
    kube.patch(*VIEW, view, namespace, {"spec": {"source": {"path": "file:///data/c.parquet"}}})
    wait_for(lambda: kube.get(*DEPLOYMENT, "sig", namespace), 30, what="the rollout")
    resolved = condition(features_resolved(kube, namespace, "True"), "FeaturesResolved")
    assert resolved["reason"] == "SignatureMatches"
