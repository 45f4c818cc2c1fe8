"""The CRDs on a real API server: served, and invalid resources refused with the field named."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes.client import ApiException

from rtml.api.model import Model
from tests.kube import Kube

pytestmark = pytest.mark.apiserver
DIGEST = "b" * 64


def model(**spec: Any) -> dict[str, Any]:
    body = {"version": "v1", "artifact": {"uri": "s3://bucket/m.onnx", "sha256": DIGEST}}
    body.update(spec)
    return {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "bad"},
        "spec": body,
    }


def feature_view(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "entity": {"name": "card", "joinKey": "card_id"},
        "features": [{"name": "amount", "dtype": "FLOAT"}],
        "source": {"type": "file", "path": "file:///d.parquet"},
    }
    body.update(spec)
    return {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": "bad"},
        "spec": body,
    }


def experiment(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "modelRef": "fraud",
        "strategy": "canary",
        "candidate": {
            "version": "v2",
            "artifact": {"uri": "s3://bucket/m2.onnx", "sha256": DIGEST},
        },
    }
    body.update(spec)
    return {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "bad"},
        "spec": body,
    }


def without(obj: dict[str, Any], *path: str) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    node = out
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]
    return out


INVALID = [
    (
        "bad sha256",
        model(artifact={"uri": "s3://b/m.onnx", "sha256": "xyz"}),
        "spec.artifact.sha256",
    ),
    ("sha256 missing for s3", model(artifact={"uri": "s3://b/m.onnx"}), "spec.artifact.sha256"),
    # Every scheme needs a digest, local ones too, unless the artifact opts out explicitly.
    ("sha256 missing for file", model(artifact={"uri": "file:///m.onnx"}), "spec.artifact.sha256"),
    ("sha256 missing for pvc", model(artifact={"uri": "pvc://c/m.onnx"}), "spec.artifact.sha256"),
    (
        "sha256 missing, allowUnverified false",
        model(artifact={"uri": "file:///m.onnx", "allowUnverified": False}),
        "spec.artifact.sha256",
    ),
    (
        "fallback artifact without sha256",
        model(fallback={"mode": "model", "artifact": {"uri": "file:///backup.onnx"}}),
        "spec.fallback.artifact.sha256",
    ),
    (
        "candidate artifact without sha256",
        experiment(candidate={"version": "v2", "artifact": {"uri": "file:///m2.onnx"}}),
        "spec.candidate.artifact.sha256",
    ),
    ("unknown backend", model(backend="triton"), "spec.backend"),
    (
        "min > max replicas",
        model(autoscaling={"minReplicas": 6, "maxReplicas": 2}),
        "spec.autoscaling.minReplicas",
    ),
    (
        "non-ascending rollout steps",
        model(rollout={"strategy": "canary", "steps": [50, 10]}),
        "spec.rollout.steps",
    ),
    (
        "non-ascending experiment steps",
        experiment(canary={"steps": [5, 50, 25]}),
        "spec.canary.steps",
    ),
    (
        "ab weight out of range",
        experiment(strategy="abtest", abtest={"candidateWeight": 100}),
        "spec.abtest.candidateWeight",
    ),
    (
        "shadow rate out of range",
        experiment(strategy="shadow", shadow={"sampleRate": 0}),
        "spec.shadow.sampleRate",
    ),
    ("missing required version", without(model(), "spec", "version"), "spec.version"),
    ("missing required candidate", without(experiment(), "spec", "candidate"), "spec.candidate"),
    ("negative SLO", model(slo={"p99LatencyMs": -5}), "spec.slo.p99LatencyMs"),
    (
        "bad duration",
        model(circuitBreaker={"openDuration": "thirty seconds"}),
        "spec.circuitBreaker.openDuration",
    ),
    (
        "bad cron",
        feature_view(materialization={"schedule": "every 5 minutes"}),
        "spec.materialization.schedule",
    ),
    ("empty feature list", feature_view(features=[]), "spec.features"),
    (
        "duplicate feature names",
        feature_view(features=[{"name": "a", "dtype": "FLOAT"}, {"name": "a", "dtype": "INT64"}]),
        "spec.features",
    ),
    (
        "unknown dtype",
        feature_view(features=[{"name": "a", "dtype": "DECIMAL"}]),
        "spec.features[0].dtype",
    ),
    ("bad ttl", feature_view(ttl="1 day"), "spec.ttl"),
    (
        "count with a field",
        feature_view(
            aggregations=[{"name": "n", "function": "count", "field": "amount", "window": "1h"}]
        ),
        "spec.aggregations[0].field",
    ),
    (
        "sum without a field",
        feature_view(aggregations=[{"name": "s", "function": "sum", "window": "1h"}]),
        "spec.aggregations[0].field",
    ),
    (
        "aggregation named as a feature",
        feature_view(aggregations=[{"name": "amount", "function": "count", "window": "1h"}]),
        "spec.aggregations",
    ),
    (
        "bad window",
        feature_view(aggregations=[{"name": "n", "function": "count", "window": "1 day"}]),
        "spec.aggregations[0].window",
    ),
    ("static fallback without value", model(fallback={"mode": "static"}), "spec.fallback.value"),
    ("unknown autoscaling metric", model(autoscaling={"metric": "gpu"}), "spec.autoscaling.metric"),
    ("file source without path", feature_view(source={"type": "file"}), "spec.source.path"),
]


@pytest.mark.parametrize(("case", "obj", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_api_server_refuses_invalid_resource_naming_the_field(
    kube: Kube, rtml_crds: list[str], namespace: str, case: str, obj: dict[str, Any], field: str
) -> None:
    obj["metadata"]["namespace"] = namespace
    with pytest.raises(ApiException) as err:
        kube.create(obj)
    assert err.value.status == 422, err.value.body
    message = json.loads(err.value.body)["message"]
    assert field in message, f"{case}: {message}"


def test_crds_are_served_with_short_names_and_status(kube: Kube, rtml_crds: list[str]) -> None:
    assert sorted(rtml_crds) == ["experiments.rtml.dev", "featureviews.rtml.dev", "models.rtml.dev"]
    group = kube.dyn.request("get", "/apis/rtml.dev/v1alpha1").to_dict()
    by_name = {r["name"]: r for r in group["resources"]}
    assert by_name["models"]["shortNames"] == ["rmodel"]
    assert by_name["featureviews"]["shortNames"] == ["rfv"]
    assert by_name["experiments"]["shortNames"] == ["rexp"]
    assert {"models/status", "featureviews/status", "experiments/status"} <= set(by_name)


def test_valid_resources_get_defaults_from_the_api_server(
    kube: Kube, rtml_crds: list[str], namespace: str
) -> None:
    m = model()
    m["metadata"] = {"name": "ok", "namespace": namespace}
    created = kube.create(m)
    spec = created["spec"]
    assert spec["backend"] == "bentoml"
    assert spec["slo"] == {"p99LatencyMs": 50, "timeoutMs": 100, "featureBudgetMs": 20}
    assert spec["autoscaling"]["metric"] == "concurrency"
    assert spec["fallback"]["mode"] == "reject"
    assert spec["rollout"]["steps"] == [5, 25, 50, 100]
    # Optional behaviour stays off when not written: a defaulted spec.decision or spec.audit
    # would make every Model answer with decisions and audit them (CI caught it on the node).
    for absent in ("decision", "audit", "ensemble", "rules", "features", "output", "rateLimit"):
        assert absent not in spec, (absent, spec)
    assert not Model.model_validate(created).spec.decides
    fv = feature_view()
    fv["metadata"] = {"name": "ok", "namespace": namespace}
    assert kube.create(fv)["spec"]["materialization"] == {
        "schedule": "*/15 * * * *",
        "enabled": True,
    }


def test_an_artifact_without_a_digest_is_accepted_only_with_allow_unverified(
    kube: Kube, rtml_crds: list[str], namespace: str
) -> None:
    unverified = {"uri": "file:///models/m.onnx", "allowUnverified": True}
    m = model(artifact=unverified, fallback={"mode": "model", "artifact": unverified})
    m["metadata"] = {"name": "unverified", "namespace": namespace}
    created = kube.create(m)["spec"]
    assert created["artifact"] == {**unverified, "format": "onnx"}
    assert created["fallback"]["artifact"] == unverified
    e = experiment(candidate={"version": "v2", "artifact": unverified})
    e["metadata"] = {"name": "unverified", "namespace": namespace}
    assert kube.create(e)["spec"]["candidate"]["artifact"] == unverified
    # The refusal says what to do, in the API server's answer.
    with pytest.raises(ApiException) as err:
        kube.patch(
            "rtml.dev/v1alpha1",
            "Model",
            "unverified",
            namespace,
            {"spec": {"artifact": {"allowUnverified": None}}},
        )
    message = json.loads(err.value.body)["message"]
    assert "spec.artifact.sha256" in message
    assert "set allowUnverified: true to load the artifact without checking it" in message
