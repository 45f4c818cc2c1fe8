"""The typed API models: defaults, cross-field rules, and the CRDs generated from them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rtml.api import Experiment, FeatureView, Model
from rtml.api.common import parse_duration
from rtml.api.crd import crd_files, render_crd
from tests.unit.helpers import DIGEST, model

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def test_checked_in_crds_match_the_models() -> None:
    for name, text in crd_files().items():
        path = REPO / "crds" / name
        assert path.exists(), f"{path} missing; run `rtml crds --out crds`"
        assert path.read_text() == text, f"{path} is stale; run `rtml crds --out crds`"


def test_chart_crds_match_crds_folder() -> None:
    for name in crd_files():
        assert (REPO / "charts/rtml/crds" / name).read_text() == (REPO / "crds" / name).read_text()


def test_model_defaults_follow_api_md() -> None:
    s = model().spec
    assert s.backend == "bentoml"
    assert s.artifact.format == "onnx"
    assert (s.slo.p99_latency_ms, s.slo.timeout_ms, s.slo.feature_budget_ms) == (50, 100, 20)
    cb = s.circuit_breaker
    assert (
        cb.failure_rate_threshold,
        cb.slow_call_rate_threshold,
        cb.window_size,
        cb.minimum_calls,
        cb.open_duration,
        cb.half_open_calls,
    ) == (50, 100, 100, 20, "30s", 5)
    assert s.slow_call_ms == 50
    assert s.fallback.mode == "reject"
    assert (s.autoscaling.min_replicas, s.autoscaling.max_replicas) == (1, 5)
    assert s.autoscaling.metric == "concurrency"
    assert s.warmup.requests == 50
    assert s.rollout.strategy == "replace"
    assert s.rollout.steps == [5, 25, 50, 100]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"artifact": {"uri": "s3://b/m.onnx", "sha256": "xyz"}}, "sha256"),
        ({"artifact": {"uri": "s3://b/m.onnx"}}, "sha256 is required"),
        ({"backend": "triton"}, "backend"),
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas"),
        ({"slo": {"p99LatencyMs": -1}}, "p99LatencyMs"),
        ({"rollout": {"steps": [50, 25]}}, "ascending"),
        ({"fallback": {"mode": "static"}}, "value is required"),
        ({"circuitBreaker": {"openDuration": "soon"}}, "openDuration"),
        ({"unknownField": 1}, "unknownField"),
    ],
)
def test_invalid_models_name_the_field(spec: dict, words: str) -> None:
    with pytest.raises(ValidationError) as err:
        model(**spec)
    assert words in str(err.value)


@pytest.mark.parametrize(
    "artifact",
    [
        {"uri": "file:///m.onnx"},
        {"uri": "file://build/m.onnx"},
        {"uri": "pvc://models/m.onnx"},
        {"uri": "https://models.example.com/m.onnx"},
        {"uri": "file:///m.onnx", "allowUnverified": False},
    ],
)
def test_every_scheme_needs_a_digest_naming_the_field(artifact: dict) -> None:
    with pytest.raises(ValidationError) as err:
        Model.model_validate({"spec": {"version": "v1", "artifact": artifact}})
    (only,) = err.value.errors()
    assert only["loc"] == ("spec", "artifact", "sha256")
    assert "sha256 is required for every artifact, file:// and pvc:// too" in only["msg"]
    assert "allowUnverified: true" in only["msg"]


def test_allow_unverified_opts_an_artifact_out_of_the_digest() -> None:
    art = {"uri": "file:///m.onnx", "allowUnverified": True}
    m = model(artifact=art, fallback={"mode": "model", "artifact": art})
    assert m.spec.artifact.sha256 is None
    assert m.spec.artifact.unverified
    assert m.spec.unverified_artifacts() == [
        ("spec.artifact", "file:///m.onnx"),
        ("spec.fallback.artifact", "file:///m.onnx"),
    ]
    # A digest wins over the opt-out: the artifact is checked.
    pinned = model(artifact={**art, "sha256": DIGEST})
    assert not pinned.spec.artifact.unverified
    assert pinned.spec.unverified_artifacts() == []
    # A backup artifact is loaded only by fallback mode model.
    idle = model(fallback={"mode": "reject", "artifact": art})
    assert idle.spec.unverified_artifacts() == []


def test_the_fallback_and_the_candidate_artifact_need_a_digest_too() -> None:
    with pytest.raises(ValidationError) as err:
        model(fallback={"mode": "model", "artifact": {"uri": "file:///backup.onnx"}})
    assert [e["loc"] for e in err.value.errors()] == [("spec", "fallback", "artifact", "sha256")]
    candidate = {"version": "v2", "artifact": {"uri": "pvc://models/v2.onnx"}}
    with pytest.raises(ValidationError) as err:
        Experiment.model_validate(
            {"spec": {"modelRef": "fraud", "strategy": "canary", "candidate": candidate}}
        )
    assert [e["loc"] for e in err.value.errors()] == [("spec", "candidate", "artifact", "sha256")]


def test_a_status_record_without_a_digest_still_reads() -> None:
    """status.activeArtifact is what served, written by the operator (an older one wrote
    file:// artifacts without a digest): reading it back must not fail."""
    m = Model.model_validate(
        {
            "spec": {"version": "v2", "artifact": {"uri": "s3://b/v2.onnx", "sha256": DIGEST}},
            "status": {"activeVersion": "v1", "activeArtifact": {"uri": "file:///v1.onnx"}},
        }
    )
    assert m.status is not None
    assert m.status.active_artifact is not None
    champion = m.serving("v1", m.status.active_artifact)
    # The champion goes on serving as it did, and says it is unverified.
    assert champion.spec.artifact.uri == "file:///v1.onnx"
    assert champion.spec.artifact.allow_unverified is True
    assert champion.spec.unverified_artifacts() == [("spec.artifact", "file:///v1.onnx")]


@pytest.mark.parametrize(
    ("features", "words"),
    [
        ([], "at least one feature or aggregation"),
        ([{"name": "a", "dtype": "FLOAT"}, {"name": "a", "dtype": "INT64"}], "duplicate"),
        ([{"name": "a", "dtype": "DECIMAL"}], "dtype"),
        ([{"name": "a", "dtype": "INT64", "default": "zero"}], "dtype INT64"),
    ],
)
def test_invalid_feature_views(features: list, words: str) -> None:
    with pytest.raises(ValidationError) as err:
        FeatureView.model_validate(
            {
                "spec": {
                    "entity": {"name": "card", "joinKey": "card_id"},
                    "features": features,
                    "source": {"type": "push"},
                }
            }
        )
    assert words in str(err.value)


def test_feature_view_cron_and_ttl() -> None:
    base = {
        "entity": {"name": "c", "joinKey": "c"},
        "features": [{"name": "a", "dtype": "BOOL"}],
        "source": {"type": "push"},
    }
    ok = FeatureView.model_validate(
        {"spec": {**base, "materialization": {"schedule": "0 * * * *"}}}
    )
    assert ok.spec.ttl == "24h"
    for bad in ({"materialization": {"schedule": "every hour"}}, {"ttl": "1 day"}):
        with pytest.raises(ValidationError):
            FeatureView.model_validate({"spec": {**base, **bad}})


def test_experiment_rules() -> None:
    base = {
        "modelRef": "fraud",
        "candidate": {"version": "v2", "artifact": {"uri": "s3://b/m2.onnx", "sha256": DIGEST}},
    }
    e = Experiment.model_validate({"spec": {**base, "strategy": "canary"}})
    assert e.spec.canary.steps == [5, 25, 50, 100]
    assert e.spec.analysis.on_metrics_unavailable == "pause"
    with pytest.raises(ValidationError, match="abtest is required"):
        Experiment.model_validate({"spec": {**base, "strategy": "abtest"}})
    with pytest.raises(ValidationError, match="candidateWeight"):
        Experiment.model_validate(
            {"spec": {**base, "strategy": "abtest", "abtest": {"candidateWeight": 100}}}
        )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("1m30s", 90), ("24h", 86400), ("250ms", 0.25), ("1.5h", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_crd_schema_is_structural_and_carries_rules() -> None:
    crd = render_crd(Model)
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"] == ["rmodel"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    autoscaling = spec["properties"]["autoscaling"]
    assert autoscaling["default"] == {"minReplicas": 1, "maxReplicas": 5, "metric": "concurrency"}
    assert any(
        "minReplicas <= self.maxReplicas" in r["rule"]
        for r in autoscaling["x-kubernetes-validations"]
    )
    assert spec["properties"]["backend"]["enum"] == ["bentoml", "kserve"]
    cols = [c["name"] for c in version["additionalPrinterColumns"]]
    assert cols[:5] == ["Version", "Backend", "Ready", "Replicas", "SLO"]

    def walk(node: dict, path: str) -> None:
        assert "$ref" not in node, path
        assert "anyOf" not in node, path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        for k, v in node.get("properties", {}).items():
            walk(v, f"{path}.{k}")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    for kind in (Model, FeatureView, Experiment):
        walk(render_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"], kind.__name__)


def test_an_optional_object_that_defaults_to_none_gets_no_default_in_the_crd() -> None:
    """spec.decision and spec.audit turn behaviour on by being there: defaulted by the API
    server, every Model would answer with decisions (and the node's canary test saw its
    erroring candidate answer the conservative decision instead of 503)."""
    spec = _schema(Model, "spec")["properties"]
    for name in ("decision", "audit", "ensemble", "features", "output", "rateLimit"):
        assert "default" not in spec[name], name
    assert spec["slo"]["default"]["timeoutMs"] == 100  # an always-present object still is
    conservative = spec["decision"]["properties"]["conservative"]
    assert conservative["default"]["action"] == "review"  # inside one that is written


def _schema(kind: type, *path: str) -> dict:
    node = render_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for name in path:
        node = node["properties"][name]
    return dict(node)


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        (Model, ("spec", "artifact")),
        (Model, ("spec", "fallback", "artifact")),
        (Experiment, ("spec", "candidate", "artifact")),
    ],
)
def test_the_crd_requires_a_digest_unless_allow_unverified(kind: type, path: tuple) -> None:
    """The API server's rule (evaluated by a real one in tests/integration/test_crds.py): the
    same for every scheme, said at the sha256 field, and not satisfied by `false`."""
    art = _schema(kind, *path)
    assert art["properties"]["allowUnverified"] == {
        "type": "boolean",
        "description": art["properties"]["allowUnverified"]["description"],
    }
    assert "default" not in art["properties"]["allowUnverified"]  # stored objects unchanged
    (rule,) = art["x-kubernetes-validations"]
    assert rule["fieldPath"] == ".sha256"
    assert rule["rule"] == (
        "has(self.sha256) || (has(self.allowUnverified) && self.allowUnverified)"
    )
    assert "file://" not in rule["rule"]
    assert "allowUnverified: true" in rule["message"]
    assert art["required"] == ["uri"]


def test_the_status_record_of_the_champion_carries_no_digest_rule() -> None:
    active = _schema(Model, "status", "activeArtifact")
    assert "x-kubernetes-validations" not in active
    assert set(active["properties"]) == {"uri", "sha256"}
