"""What serves a Model during a canary rollout, and which Experiment holds its traffic."""

from __future__ import annotations

from typing import Any

import pytest

from rtml.api.experiment import ExperimentSpec
from rtml.api.traffic import TrafficPlan
from rtml.operator import reconcile
from rtml.operator.conditions import Cond, get_condition
from rtml.operator.experiment import promote_into_model
from rtml.operator.render import RenderContext
from rtml.operator.render.configmap import render_traffic_config_map
from rtml.operator.rollout import (
    holder,
    owned_experiment_name,
    plan_of,
    render_owned_experiment,
    serving,
)
from rtml.operator.status import Canary
from tests.unit.helpers import model
from tests.unit.test_pods import FakeClient, deployment, model_body

pytestmark = pytest.mark.unit
OLD = {"uri": "s3://b/v1.onnx", "sha256": "1" * 64}
NEW = {"uri": "s3://b/v2.onnx", "sha256": "2" * 64}


def canary_model(version: str = "v2", artifact: dict[str, str] | None = None) -> Any:
    m = model(version=version, artifact=artifact or NEW, rollout={"strategy": "canary"})
    return m.model_copy(
        update={"metadata": m.metadata.model_copy(update={"uid": "uid-m", "name": "fraud"})}
    )


ACTIVE = {"activeVersion": "v1", "activeArtifact": OLD}


def owned(
    m: Any, phase: str | None = None, artifact: dict[str, str] | None = None
) -> dict[str, Any]:
    exp = render_owned_experiment(m)
    exp["metadata"]["creationTimestamp"] = "2026-12-02T10:00:00Z"
    if artifact is not None:
        exp["spec"]["candidate"]["artifact"] = artifact
    if phase:
        exp["status"] = {"phase": phase, "candidateWeight": 25}
    return exp


def test_replace_serves_the_spec_and_owns_no_experiment() -> None:
    m = model(version="v2", artifact=NEW)
    s = serving(m, ACTIVE, [])
    assert s.model is m
    assert s.experiment is None


def test_a_new_artifact_keeps_the_champion_and_asks_for_an_owned_experiment() -> None:
    m = canary_model()
    s = serving(m, ACTIVE, [])
    assert (s.model.spec.version, s.model.spec.artifact.uri) == ("v1", OLD["uri"])
    assert m.spec.version == "v2"  # the Model's own spec is never changed
    exp = s.experiment
    assert exp is not None
    assert exp["metadata"]["name"] == "fraud-v2"
    assert exp["metadata"]["ownerReferences"][0]["uid"] == "uid-m"
    assert exp["spec"]["candidate"] == {"version": "v2", "artifact": NEW}
    assert (exp["spec"]["strategy"], exp["spec"]["onSuccess"]) == ("canary", "promote")


def test_the_first_rollout_has_no_champion_to_protect() -> None:
    s = serving(canary_model(), {}, [])
    assert s.model.spec.version == "v2"
    assert s.experiment is None


def test_promoted_serves_the_spec_and_a_rollback_keeps_the_champion() -> None:
    m = canary_model()
    promoted = serving(m, ACTIVE, [owned(m, "Promoted")])
    assert promoted.model.spec.artifact.uri == NEW["uri"]
    assert promoted.canary is None
    rolled_back = owned(m, "RolledBack")
    rolled_back["status"]["lastVerdict"] = "rolled back: over the gate: errorRate 0.2 (max 0.01)"
    back = serving(m, ACTIVE, [rolled_back])
    assert back.model.spec.artifact.uri == OLD["uri"]
    assert back.superseded == ()  # the record stays until the spec changes again
    # The spec never serves without a change: the Model says so (Stalled, docs/gitops.md).
    assert back.canary == Canary(
        "fraud-v2", "v2", "RolledBack", "rolled back: over the gate: errorRate 0.2 (max 0.01)"
    )
    assert serving(m, ACTIVE, [owned(m, "Progressing")]).canary == Canary("fraud-v2", "v2")


def test_a_newer_version_supersedes_the_running_canary() -> None:
    v2 = canary_model()
    v3 = canary_model("v3", {"uri": "s3://b/v3.onnx", "sha256": "3" * 64})
    s = serving(v3, ACTIVE, [owned(v2, "Progressing")])
    assert s.superseded == ("fraud-v2",)
    assert s.experiment is not None
    assert s.experiment["metadata"]["name"] == "fraud-v3"
    assert s.model.spec.version == "v1"


def test_the_same_version_with_another_artifact_after_an_ended_canary_starts_again() -> None:
    m = canary_model()
    s = serving(
        m, ACTIVE, [owned(m, "RolledBack", artifact={"uri": "s3://b/x", "sha256": "9" * 64})]
    )
    assert s.superseded == ("fraud-v2",)
    assert s.experiment is None  # recreated on the next pass, once the old one is gone
    assert s.canary == Canary("fraud-v2", "v2")  # a canary to come, not one that ended


def test_experiment_names_are_valid_object_names() -> None:
    assert owned_experiment_name(canary_model("V3.1_beta")) == "fraud-v3.1-beta"


def test_the_oldest_running_experiment_holds_the_traffic() -> None:
    def exp(name: str, created: str, phase: str | None = None) -> dict[str, Any]:
        e: dict[str, Any] = {"metadata": {"name": name, "creationTimestamp": created}}
        if phase:
            e["status"] = {"phase": phase}
        return e

    done = exp("a", "2026-01-01T00:00:00Z", "RolledBack")
    b = exp("b", "2026-01-02T00:00:00Z", "Progressing")
    c = exp("c", "2026-01-01T12:00:00Z")
    assert holder([done, b, c]) is c
    assert holder([done]) is None


def test_the_plan_follows_the_holders_status() -> None:
    m = canary_model()
    exp = owned(m, "Progressing")
    plan = plan_of(exp)
    assert (plan.experiment, plan.weight, plan.candidate.version if plan.candidate else None) == (
        "fraud-v2",
        25,
        "v2",
    )
    assert plan.revision
    assert plan_of(owned(m, "RolledBack")) == TrafficPlan()
    assert plan_of(None) == TrafficPlan()
    cm = render_traffic_config_map(m, plan)
    assert cm["metadata"]["name"] == "fraud-rtml-traffic"
    assert TrafficPlan.model_validate_json(cm["data"]["traffic.json"]) == plan


def test_a_canary_holds_the_model_from_the_first_status_after_the_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kstatus: the first status written for a new artifact already says work is under way;
    Settled there would read as Current (Flux) while the spec's version does not serve."""
    resolved = Cond("FeaturesResolved", "True", "NoFeatureView", "no view")
    monkeypatch.setattr(reconcile, "check_model_signature", lambda *_: resolved)
    body = model_body(status={"activeVersion": "v1", "activeArtifact": OLD})
    body["spec"].update(version="v2", artifact=NEW, rollout={"strategy": "canary"})
    client = FakeClient(deployment(available=1), [])  # no Experiment exists yet
    status = reconcile.reconcile_model(client, body, RenderContext())  # type: ignore[arg-type]
    reconciling = get_condition(status["conditions"], "Reconciling") or {}
    assert (reconciling.get("status"), reconciling.get("reason")) == ("True", "ExperimentRunning")
    assert reconciling.get("message") == "Experiment fraud-v2: Pending"
    assert (status["experiment"], status["activeVersion"]) == ("fraud-v2", "v1")


def test_a_canary_of_an_unverified_artifact_carries_the_opt_out_into_its_experiment() -> None:
    unverified = {"uri": "file:///models/v2.onnx", "allowUnverified": True}
    exp = serving(canary_model(artifact=unverified), ACTIVE, []).experiment
    assert exp is not None
    assert exp["spec"]["candidate"]["artifact"] == unverified
    # The API server's rule and the models' agree: the Experiment as rendered is valid.
    assert ExperimentSpec.model_validate(exp["spec"]).candidate.artifact.unverified


def test_a_champion_recorded_without_a_digest_keeps_serving() -> None:
    """An older operator recorded file:// champions without a sha256: the record still reads,
    and the champion is rendered with the opt-out said, so its pods do not refuse it."""
    old = {"activeVersion": "v1", "activeArtifact": {"uri": "file:///models/v1.onnx"}}
    s = serving(canary_model(), old, [])
    art = s.model.spec.artifact
    assert (art.uri, art.sha256, art.allow_unverified) == ("file:///models/v1.onnx", None, True)
    assert s.experiment is not None  # the spec's pinned artifact runs as the canary


class SpecPatches:
    """The two client calls promote_into_model makes, recorded."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self.events: list[str] = []

    def patch_model_spec(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        self.patches.append(spec)

    def event(self, involved: dict, reason: str, message: str, type_: str = "Normal") -> None:
        self.events.append(reason)


@pytest.mark.parametrize(
    ("artifact", "written"),
    [
        ({"uri": "file:///m/v2.onnx", "allowUnverified": True},
         {"uri": "file:///m/v2.onnx", "sha256": None, "allowUnverified": True}),
        ({"uri": "s3://b/v2.onnx", "sha256": "2" * 64},
         {"uri": "s3://b/v2.onnx", "sha256": "2" * 64, "allowUnverified": None}),
    ],
)  # fmt: skip
def test_promotion_replaces_the_models_digest_and_opt_out(
    artifact: dict[str, Any], written: dict[str, Any]
) -> None:
    """A merge patch keeps what it does not name: the Model's old sha256 (or allowUnverified)
    is removed explicitly (null), or it would be checked against the candidate's file."""
    body = {
        "metadata": {"name": "fraud-v2", "namespace": "ml"},
        "spec": {
            "modelRef": "fraud",
            "strategy": "canary",
            "candidate": {"version": "v2", "artifact": artifact},
        },
    }
    client = SpecPatches()
    promote_into_model(client, body)  # type: ignore[arg-type]
    assert client.patches == [{"version": "v2", "artifact": written}]
    assert client.events == ["ModelUpdated"]
