"""The chart's Argo CD health checks (charts/rtml/argocd/*.lua) under a real Lua 5.1, against
statuses the operator's own code writes: compute_model_status and reconcile_model for Models,
compute_feature_view_status for FeatureViews, reconcile_experiment (the canary state machine
and its conditions) for Experiments. docs/gitops.md shows the same scripts as an argocd-cm
patch; the last tests keep it equal to the files and the chart packaging them.

lua5.1 is Debian's package (.ci/env.sh installs it); without it these tests fail.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from rtml.api.experiment import ABORT_ANNOTATION, PAUSE_ANNOTATION
from rtml.api.model import Model
from rtml.operator import reconcile
from rtml.operator.analysis import MetricsUnavailable, Window
from rtml.operator.conditions import Cond, get_condition
from rtml.operator.experiment import reconcile_experiment
from rtml.operator.featureview_status import RegistryFacts, compute_feature_view_status
from rtml.operator.render import RenderContext
from rtml.operator.rollout import render_owned_experiment
from rtml.operator.status import Observed, compute_model_status, invalid_spec_status
from tests.argocd import KEY_PREFIX, REPO, health, scripts
from tests.unit.helpers import model
from tests.unit.test_pods import FakeClient, deployment, model_body

pytestmark = pytest.mark.unit
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
CTX = RenderContext()
OLD = {"uri": "s3://bucket/m.onnx", "sha256": "a" * 64}  # model_body's artifact: v1
NEW = {"uri": "s3://bucket/v2.onnx", "sha256": "b" * 64}


def test_one_script_per_kind_named_after_its_argocd_cm_key() -> None:
    assert sorted(scripts()) == ["rtml.dev_Experiment", "rtml.dev_FeatureView", "rtml.dev_Model"]


def test_the_scripts_run_with_argo_cds_libraries_only(tmp_path: Path) -> None:
    """The sandbox is as narrow as Argo CD's: the string library and string methods fail."""
    obj = {"apiVersion": "rtml.dev/v1alpha1", "kind": "Model", "metadata": {"name": "x"}}
    for body in ('return {status = string.upper("healthy")}', 'return {status = ("x"):upper()}'):
        script = tmp_path / "uses-string.lua"
        script.write_text(body)
        with pytest.raises(AssertionError, match=r"lua5\.1 failed"):
            health(obj, script)


@pytest.mark.parametrize("kind", ["Model", "FeatureView", "Experiment"])
def test_an_object_the_operator_has_not_seen_yet_is_progressing(kind: str) -> None:
    obj = {"apiVersion": "rtml.dev/v1alpha1", "kind": kind, "metadata": {"name": "x"}}
    status, message = health(obj)
    assert status == "Progressing"
    assert "rtml operator" in message
    # A status with nothing in it yet, as the API server may show it.
    assert health({**obj, "status": {}})[0] == "Progressing"


# -- Models ----------------------------------------------------------------------------------


def model_object(status: dict[str, Any], generation: int = 3, **spec: Any) -> dict[str, Any]:
    m = model(autoscaling={"minReplicas": 2, "maxReplicas": 2}, **spec)
    body = m.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["metadata"]["generation"] = generation
    return {"apiVersion": "rtml.dev/v1alpha1", "kind": "Model", **body, "status": status}


def model_status(obs: Observed, **spec: Any) -> dict[str, Any]:
    m = model(autoscaling={"minReplicas": 2, "maxReplicas": 2}, **spec)
    return compute_model_status(m, obs, None, CTX, NOW)


def rollout(**status: Any) -> dict[str, Any]:
    dep: dict[str, Any] = {
        "metadata": {"generation": 1},
        "spec": {"replicas": 2},
        "status": {
            "observedGeneration": 1,
            "replicas": 2,
            "updatedReplicas": 2,
            "availableReplicas": 2,
            "readyReplicas": 2,
            "conditions": [
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
            ],
        },
    }
    dep["status"].update(status)
    return dep


def test_a_rolled_out_model_is_healthy() -> None:
    status, message = health(model_object(model_status(Observed(deployment=rollout()))))
    assert (status, message) == ("Healthy", "2 of 2 replicas available at version v1")


def test_a_model_that_loads_its_artifact_unverified_is_still_healthy() -> None:
    """ArtifactUnverified=True is a warning in the Model's status, not a health problem."""
    unverified = {"uri": "file:///models/m.onnx", "allowUnverified": True}
    s = model_status(Observed(deployment=rollout()), artifact=unverified)
    assert get_condition(s["conditions"], "ArtifactUnverified")["status"] == "True"  # type: ignore[index]
    status, message = health(model_object(s, artifact=unverified))
    assert (status, message) == ("Healthy", "2 of 2 replicas available at version v1")


def test_a_model_whose_new_generation_is_not_observed_yet_is_progressing() -> None:
    ready = model_status(Observed(deployment=rollout()))  # written for generation 3
    status, message = health(model_object(ready, generation=4))
    assert status == "Progressing"
    assert message == "Waiting for the rtml operator to observe generation 4 (the status is for 3)"


def test_a_rolling_out_model_is_progressing_with_how_far() -> None:
    s = model_status(Observed(deployment=rollout(updatedReplicas=1, replicas=3)))
    status, message = health(model_object(s))
    assert status == "Progressing"
    assert message.startswith("1 of 2 replicas updated")


def test_a_rollout_past_its_deadline_is_degraded() -> None:
    stuck = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    s = model_status(Observed(deployment=rollout(updatedReplicas=1, conditions=[stuck])))
    status, message = health(model_object(s))
    assert status == "Degraded"
    assert message.startswith("the Deployment did not progress in time")


def test_an_invalid_spec_is_degraded() -> None:
    s = invalid_spec_status("spec.version: Field required", 3, None, NOW)
    assert health(model_object(s)) == ("Degraded", "spec.version: Field required")


def test_a_model_that_lost_a_replica_is_degraded_with_the_reason() -> None:
    s = model_status(Observed(deployment=rollout(availableReplicas=1, readyReplicas=1)))
    assert s["phase"] == "Degraded"
    assert health(model_object(s)) == ("Degraded", "1 of 2 updated replicas are available")


def test_a_model_held_by_its_feature_view_is_progressing() -> None:
    waiting = Cond(
        "FeaturesResolved", "Unknown", "FeatureViewNotReady", "FeatureView cards is not Ready yet"
    )
    s = model_status(Observed(deployment=rollout(), features=waiting))
    status, message = health(model_object(s))
    assert status == "Progressing"
    assert "FeatureView cards is not Ready yet" in message


def test_a_model_reading_a_missing_feature_view_is_degraded() -> None:
    missing = Cond(
        "FeaturesResolved", "False", "FeatureViewNotFound", "FeatureView 'cards' does not exist"
    )
    status, message = health(
        model_object(model_status(Observed(deployment=rollout(), features=missing)))
    )
    assert status == "Degraded"
    assert "FeatureView 'cards' does not exist" in message


def test_an_ab_test_on_a_model_serving_its_spec_leaves_it_healthy() -> None:
    """The Experiment's own health shows the test; the Model serves what Git says."""
    obs = Observed(deployment=rollout(), experiment=("fraud-ab", "step 1 at 20%: analysing"))
    status, message = health(model_object(model_status(obs)))
    assert status == "Healthy"
    assert message == (
        "2 of 2 replicas available at version v1; Experiment fraud-ab: step 1 at 20%: analysing"
    )


class Cluster(FakeClient):
    """reconcile_model's view of a namespace with a ready Deployment and these Experiments."""

    def __init__(self, experiments: list[dict[str, Any]]) -> None:
        super().__init__(deployment(available=1), [])
        self.experiments = experiments

    def list_in(self, *_: Any) -> list[dict[str, Any]]:
        return self.experiments


@pytest.fixture
def no_signature_check(monkeypatch: pytest.MonkeyPatch) -> None:
    resolved = Cond("FeaturesResolved", "True", "NoFeatureView", "no view")
    monkeypatch.setattr(reconcile, "check_model_signature", lambda *_: resolved)


def canary_body() -> dict[str, Any]:
    """A Model with a canary rollout whose spec moved from v1 (serving) to v2."""
    body = model_body(status={"activeVersion": "v1", "activeArtifact": OLD})
    body["spec"].update(version="v2", artifact=NEW, rollout={"strategy": "canary"})
    return body


def reconciled(body: dict[str, Any], experiments: list[dict[str, Any]]) -> dict[str, Any]:
    status = reconcile.reconcile_model(Cluster(experiments), body, CTX)  # type: ignore[arg-type]
    return {**body, "status": status}


@pytest.mark.usefixtures("no_signature_check")
def test_a_canary_rollout_is_progressing_from_the_first_status_until_it_ends() -> None:
    body = canary_body()
    first = reconciled(body, [])  # the owned Experiment is applied in this very pass
    assert health(first) == (
        "Progressing",
        "Canary of v2 under way, v1 serves: Experiment fraud-v2: Pending",
    )
    running = render_owned_experiment(Model.model_validate(body))
    running["metadata"]["creationTimestamp"] = "2026-12-02T12:00:00Z"
    running["status"] = {"phase": "Progressing", "lastVerdict": "step 1 at 20%: analysing"}
    status, message = health(reconciled(body, [running]))
    assert (status, message) == (
        "Progressing",
        "Canary of v2 under way, v1 serves: Experiment fraud-v2: step 1 at 20%: analysing",
    )


@pytest.mark.usefixtures("no_signature_check")
def test_a_rolled_back_canary_degrades_a_model_that_still_serves_its_champion() -> None:
    body = canary_body()
    ended = render_owned_experiment(Model.model_validate(body))
    ended["status"] = {
        "phase": "RolledBack",
        "lastVerdict": "rolled back: over the gate: errorRate 0.2 (max 0.01)",
    }
    obj = reconciled(body, [ended])
    assert obj["status"]["phase"] == "Ready"  # v1 serves well
    status, message = health(obj)
    assert status == "Degraded"
    assert message.startswith("the canary of v2 ended RolledBack (Experiment fraud-v2: rolled back")
    # Setting the spec back to the serving version clears it.
    back = copy.deepcopy(obj)
    back["spec"].update(version="v1", artifact=OLD)
    assert health(reconciled(back, [ended]))[0] == "Healthy"


# -- FeatureViews ----------------------------------------------------------------------------


def view_object(status: dict[str, Any], generation: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": "cards", "namespace": "ml", "generation": generation},
        "status": status,
    }


REGISTERED = RegistryFacts(feast_name="cards", feature_names=["amount", "count_1h"])


def test_a_registered_view_is_healthy() -> None:
    s = compute_feature_view_status(2, REGISTERED, None, NOW)
    assert health(view_object(s)) == (
        "Healthy",
        "registered in Feast as 'cards' with 2 feature(s)",
    )


def test_a_view_feast_refused_is_degraded() -> None:
    refused = Cond("Registered", "False", "FeastRejected", "Feast refused the view: bad dtype")
    s = compute_feature_view_status(2, RegistryFacts(refused=refused), None, NOW)
    assert health(view_object(s)) == ("Degraded", "Feast refused the view: bad dtype")


def test_a_view_whose_cronjob_was_refused_is_degraded() -> None:
    problem = Cond("Ready", "False", "ApplyRejected", "the API server refused CronJob cards")
    s = compute_feature_view_status(2, replace(REGISTERED, problem=problem), None, NOW)
    assert health(view_object(s)) == ("Degraded", "the API server refused CronJob cards")


def test_a_view_the_registry_never_saw_is_progressing() -> None:
    s = compute_feature_view_status(
        2, RegistryFacts(unreachable="the registry is unreachable"), None, NOW
    )
    assert health(view_object(s)) == ("Progressing", "the registry is unreachable")


def test_a_registry_blip_keeps_a_ready_view_healthy_and_says_so() -> None:
    before = compute_feature_view_status(2, REGISTERED, None, NOW)
    blip = compute_feature_view_status(
        2,
        RegistryFacts(unreachable="the registry is unreachable"),
        before,
        NOW + timedelta(minutes=1),
    )
    status, message = health(view_object(blip))
    assert status == "Healthy"
    assert message.endswith("; the registry is unreachable")


def test_a_changed_view_not_yet_registered_is_progressing() -> None:
    s = compute_feature_view_status(2, REGISTERED, None, NOW)
    assert health(view_object(s, generation=3))[0] == "Progressing"


# -- Experiments: reconcile_experiment's own status, tick after tick --------------------------

POD = {
    "metadata": {"name": "fraud-7d9-abcde"},
    "status": {"conditions": [{"type": "Ready", "status": "True"}]},
}


@dataclass
class Lab:
    """What reconcile_experiment reads and writes, in memory: Model `fraud` with one ready pod
    that applies every plan, and a metrics source answering as told (the client and the
    MetricsSource at once)."""

    readings: dict[str, float | None] = field(
        default_factory=lambda: {"requests": 500.0, "errorRate": 0.0}
    )
    prometheus_down: bool = False
    experiments: list[dict[str, Any]] = field(default_factory=list)
    now: datetime = NOW

    # the KubeClient side
    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        if kind == "Model":
            return model_body()
        return None  # the traffic ConfigMap: pods are not annotated

    def list_in(self, *_: Any) -> list[dict[str, Any]]:
        return self.experiments

    def list_selected(self, *_: Any) -> list[dict[str, Any]]:
        return [POD]

    def patch_status(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        exp = next(e for e in self.experiments if e["metadata"]["name"] == name)
        merged = {**(exp.get("status") or {}), **patch}
        exp["status"] = {k: v for k, v in merged.items() if v is not None}

    def event(self, *_: Any, **__: Any) -> None:
        pass

    def annotate_pod(self, *_: Any) -> None:
        pass

    # the MetricsSource side
    def measure(self, metric: str, w: Window) -> float | None:
        if self.prometheus_down:
            raise MetricsUnavailable("Prometheus at http://p:9090 refused the connection")
        return self.readings.get(metric)

    def pods_applying(self, namespace: str, model: str, revision: str) -> set[str]:
        if self.prometheus_down:
            raise MetricsUnavailable("Prometheus at http://p:9090 refused the connection")
        return {POD["metadata"]["name"]}

    def experiment(self, name: str = "fraud-ab", **spec: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "apiVersion": "rtml.dev/v1alpha1",
            "kind": "Experiment",
            "metadata": {
                "name": name,
                "namespace": "ml",
                "uid": f"uid-{name}",
                "generation": 1,
                "creationTimestamp": f"2026-12-02T11:{len(self.experiments):02d}:00Z",
            },
            "spec": {
                "modelRef": "fraud",
                "strategy": "canary",
                "candidate": {"version": "v2", "artifact": NEW},
                "canary": {"steps": [50], "stepInterval": "1m"},
                "analysis": {"metrics": [{"name": "errorRate", "max": 0.01}], "minRequests": 100},
                **spec,
            },
        }
        self.experiments.append(body)
        return body

    def tick(self, exp: dict[str, Any], seconds: float = 1) -> tuple[str, str]:
        self.now += timedelta(seconds=seconds)
        reconcile_experiment(self, exp, self, self.now)  # type: ignore[arg-type]
        return health(exp)


def test_a_running_experiment_is_progressing_then_healthy_once_promoted() -> None:
    lab = Lab()
    exp = lab.experiment(onSuccess="promote")
    assert lab.tick(exp) == ("Progressing", "Progressing: step 1 at 50%")
    assert lab.tick(exp) == ("Progressing", "Progressing: step 1 at 50%: analysing")
    assert lab.tick(exp, 61) == ("Healthy", "Promoted: v2 is Model fraud's version now")


def test_an_experiment_that_keeps_the_model_completes_healthy() -> None:
    lab = Lab()
    exp = lab.experiment()
    lab.tick(exp)
    lab.tick(exp)
    status, message = lab.tick(exp, 61)
    assert (exp["status"]["phase"], status) == ("Completed", "Healthy")
    assert message == "Completed: every step passed; the Model keeps its version (onSuccess: keep)"


def test_a_rolled_back_experiment_is_degraded_with_the_measured_value() -> None:
    lab = Lab(readings={"requests": 500.0, "errorRate": 0.2})
    exp = lab.experiment()
    lab.tick(exp)
    lab.tick(exp)
    status, message = lab.tick(exp, 61)
    assert (exp["status"]["phase"], status) == ("RolledBack", "Degraded")
    assert message == "RolledBack: rolled back: over the gate: errorRate 0.2 (max 0.01)"


def test_an_aborted_experiment_is_degraded() -> None:
    lab = Lab()
    exp = lab.experiment()
    lab.tick(exp)
    exp["metadata"]["annotations"] = {ABORT_ANNOTATION: "true"}
    assert lab.tick(exp) == ("Degraded", "Aborted: aborted")


def test_a_paused_experiment_is_suspended_and_says_how_it_resumes() -> None:
    lab = Lab()
    exp = lab.experiment()
    lab.tick(exp)
    exp["metadata"]["annotations"] = {PAUSE_ANNOTATION: "true"}
    assert lab.tick(exp) == (
        "Suspended",
        "Paused at 50% by request: rtml experiment resume fraud-ab "
        "(or remove the rtml.dev/pause annotation)",
    )
    exp["metadata"]["annotations"] = {}
    assert lab.tick(exp)[0] == "Progressing"


def test_an_experiment_paused_for_metrics_is_suspended_until_they_answer() -> None:
    lab = Lab(prometheus_down=True)
    exp = lab.experiment()
    lab.tick(exp)
    assert lab.tick(exp) == (
        "Suspended",
        "Paused at 50%: the metrics source does not answer; it resumes by itself once it does",
    )


def test_an_experiment_waiting_for_the_model_is_progressing_with_the_reason() -> None:
    lab = Lab()
    first = lab.experiment("first")
    lab.tick(first)
    second = lab.experiment("second")
    status, message = lab.tick(second)
    assert (second["status"]["phase"], status) == ("Pending", "Progressing")
    assert message.startswith("Pending: Experiment first already runs on Model fraud")


def test_an_ended_experiment_edited_afterwards_does_not_stay_progressing() -> None:
    lab = Lab()
    exp = lab.experiment()
    lab.tick(exp)
    exp["metadata"]["annotations"] = {ABORT_ANNOTATION: "true"}
    lab.tick(exp)
    exp["metadata"]["generation"] = 2  # someone edits the spec in Git
    assert health(exp)[0] == "Progressing"  # not observed yet...
    assert lab.tick(exp) == ("Degraded", "Aborted: aborted")  # ...then it is, and stays ended


def test_an_experiment_with_a_spec_rtml_cannot_read_is_degraded() -> None:
    lab = Lab()
    exp = lab.experiment(strategy="abtest")  # abtest without its abtest section
    status, message = lab.tick(exp)
    assert status == "Degraded"
    assert message.startswith("InvalidSpec: the spec is invalid")


# -- what users paste: docs/gitops.md and the chart ------------------------------------------

GITOPS = REPO / "docs" / "gitops.md"


def doc_patch() -> dict[str, Any]:
    """The argocd-cm patch in docs/gitops.md (the yaml block after the marker comment)."""
    text = GITOPS.read_text()
    found = re.search(r"<!-- argocd-cm: generated -->\s*```yaml\n(.*?)```", text, re.DOTALL)
    assert found, "docs/gitops.md lost its argocd-cm block (after <!-- argocd-cm: generated -->)"
    return dict(yaml.safe_load(found[1]))


def test_the_documented_argocd_cm_patch_is_the_chart_files() -> None:
    patch = doc_patch()
    assert (patch["apiVersion"], patch["kind"]) == ("v1", "ConfigMap")
    assert patch["metadata"]["name"] == "argocd-cm"
    expected = {KEY_PREFIX + stem: path.read_text() for stem, path in scripts().items()}
    assert patch["data"] == expected, (
        "docs/gitops.md's argocd-cm block differs from charts/rtml/argocd/*.lua: paste the "
        "files again (each under its key, as a literal block)"
    )
