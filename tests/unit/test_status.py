"""compute_model_status and condition semantics, without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rtml.api.common import ArtifactRecord
from rtml.operator.conditions import Cond, get_condition, merge_conditions
from rtml.operator.render import RenderContext
from rtml.operator.status import (
    Canary,
    Observed,
    artifact_condition,
    compute_model_status,
    deployment_available,
    holds_rollout,
    invalid_spec_status,
    unverified_artifacts,
)
from tests.unit.helpers import model

pytestmark = pytest.mark.unit
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CTX = RenderContext()


def deployment(
    gen: int = 1,
    observed: int = 1,
    replicas: int = 2,
    updated: int = 2,
    available: int = 2,
    ready: int = 2,
    total: int | None = None,
    conditions: list | None = None,
) -> dict:
    return {
        "metadata": {"generation": gen},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas if total is None else total,
            "updatedReplicas": updated,
            "availableReplicas": available,
            "readyReplicas": ready,
            "conditions": conditions or [],
        },
    }


COMPLETE = {
    "type": "Progressing",
    "status": "True",
    "reason": "NewReplicaSetAvailable",
    "message": 'ReplicaSet "fraud-7d9" has successfully progressed.',
}
PROGRESSING = {**COMPLETE, "reason": "ReplicaSetUpdated"}
CREATED = {**COMPLETE, "reason": "NewReplicaSetCreated"}


def cond(status: dict, type_: str) -> dict:
    c = get_condition(status["conditions"], type_)
    assert c is not None, type_
    return c


def test_rolled_out_deployment_is_ready() -> None:
    m = model(autoscaling={"minReplicas": 2, "maxReplicas": 2})
    s = compute_model_status(m, Observed(deployment=deployment()), None, CTX, NOW)
    assert s["phase"] == "Ready"
    assert cond(s, "RolledOut")["status"] == "True"
    assert cond(s, "Ready")["status"] == "True"
    assert cond(s, "Reconciling")["status"] == "False"
    assert cond(s, "Stalled")["status"] == "False"
    assert s["observedGeneration"] == 3
    assert s["activeVersion"] == "v1"
    assert s["url"] == "http://fraud.ml.svc.cluster.local"
    assert (s["replicas"], s["readyReplicas"]) == (2, 2)


@pytest.mark.parametrize(
    ("dep", "phase", "reason"),
    [
        (None, "Pending", "DeploymentMissing"),
        (deployment(gen=2, observed=1), "Progressing", "RollingOut"),
        (deployment(updated=1, total=3), "Progressing", "RollingOut"),
        # A first rollout (no Progressing condition yet, or one still under way) progresses...
        (deployment(available=1), "Progressing", "ReplicasUnavailable"),
        (deployment(available=0, ready=0), "Progressing", "ReplicasUnavailable"),
        (deployment(available=1, conditions=[PROGRESSING]), "Progressing", "ReplicasUnavailable"),
        (deployment(available=0, conditions=[CREATED]), "Progressing", "ReplicasUnavailable"),
        # ...a completed one that loses a replica is degraded, even with none left.
        (deployment(available=1, conditions=[COMPLETE]), "Degraded", "ReplicasUnavailable"),
        (
            deployment(available=0, ready=0, conditions=[COMPLETE]),
            "Degraded",
            "ReplicasUnavailable",
        ),
        (
            deployment(
                conditions=[
                    {
                        "type": "Progressing",
                        "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "message": "too slow",
                    }
                ]
            ),
            "Failed",
            "ProgressDeadlineExceeded",
        ),
    ],
)
def test_deployment_rollout_states(dep: dict | None, phase: str, reason: str) -> None:
    m = model(autoscaling={"minReplicas": 2, "maxReplicas": 2})
    s = compute_model_status(m, Observed(deployment=dep), {"activeVersion": "v0"}, CTX, NOW)
    assert s["phase"] == phase
    assert cond(s, "Ready")["status"] == "False"
    assert cond(s, "Ready")["reason"] == reason
    assert s["activeVersion"] == "v0"  # lags until the rollout is done
    assert cond(s, "Stalled")["status"] == ("True" if phase == "Failed" else "False")
    assert cond(s, "Reconciling")["status"] == (
        "True" if phase in ("Pending", "Progressing") else "False"
    )


def test_kserve_missing_crd_says_so_in_words() -> None:
    s = compute_model_status(
        model(backend="kserve"), Observed(kserve_installed=False), None, CTX, NOW
    )
    ready = cond(s, "Ready")
    assert ready["reason"] == "KServeNotInstalled"
    assert "InferenceService CRD" in ready["message"]
    assert s["phase"] == "Failed"
    assert cond(s, "Stalled")["status"] == "True"


def test_kserve_rolls_up_inference_service_conditions() -> None:
    isvc = {
        "status": {
            "url": "http://churn.ml.example.com",
            "conditions": [
                {"type": "PredictorReady", "status": "True"},
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "IngressNotConfigured",
                    "message": "no gw",
                },
            ],
        }
    }
    s = compute_model_status(
        model(backend="kserve"), Observed(inference_service=isvc), None, CTX, NOW
    )
    assert cond(s, "RolledOut")["status"] == "True"
    # KServe's own Ready=False (and why) is the Model's, not masked by RolledOut=True.
    assert cond(s, "Ready")["status"] == "False"
    assert cond(s, "Ready")["reason"] == "IngressNotConfigured"
    assert "no gw" in cond(s, "Ready")["message"]
    assert s["url"] == "http://churn.ml.example.com"
    assert s["phase"] == "Progressing"


def test_kserve_without_status_yet_is_unknown_not_ready() -> None:
    s = compute_model_status(
        model(backend="kserve"), Observed(inference_service={}), None, CTX, NOW
    )
    assert cond(s, "RolledOut")["status"] == "Unknown"
    assert cond(s, "Ready")["status"] == "False"


def test_apply_problem_marks_failed() -> None:
    obs = Observed(deployment=deployment(), problem=Cond("Ready", "False", "ApplyRejected", "no"))
    s = compute_model_status(model(), obs, None, CTX, NOW)
    assert s["phase"] == "Failed"
    assert cond(s, "Ready")["reason"] == "ApplyRejected"


def test_a_server_failure_while_applying_is_said_while_retries_go_on() -> None:
    """A 500 on every apply (a full service range) once left Models with no status at all."""
    failing = Cond("Ready", "False", "ApplyFailing", "range is full; retrying")
    ready = compute_model_status(model(), Observed(deployment=deployment()), None, CTX, NOW)
    assert ready["phase"] == "Ready"
    s = compute_model_status(
        model(), Observed(deployment=deployment(), failing=failing), None, CTX, NOW
    )
    assert s["phase"] == "Degraded"  # the pods already there still serve
    assert (cond(s, "Ready")["status"], cond(s, "Ready")["reason"]) == ("False", "ApplyFailing")
    assert (cond(s, "Reconciling")["status"], cond(s, "Reconciling")["reason"]) == (
        "True",
        "ApplyFailing",
    )
    assert cond(s, "Stalled")["status"] == "False"  # not for the user to fix: retried
    new = compute_model_status(model(), Observed(deployment=None, failing=failing), None, CTX, NOW)
    assert new["phase"] == "Pending"
    assert "range is full" in cond(new, "Ready")["message"]


def test_features_condition_names_the_missing_view() -> None:
    m = model(features={"featureViewRef": "txns"})
    s = compute_model_status(m, Observed(deployment=deployment()), None, CTX, NOW)
    fr = cond(s, "FeaturesResolved")
    assert (fr["status"], fr["reason"]) == ("False", "FeatureViewNotFound")
    assert "txns" in fr["message"]
    s2 = compute_model_status(model(), Observed(deployment=deployment()), None, CTX, NOW)
    assert cond(s2, "FeaturesResolved")["status"] == "True"


def test_last_transition_time_moves_only_when_status_flips() -> None:
    first = merge_conditions([], [Cond("Ready", "False", "A", "a")], 1, NOW)
    later = NOW + timedelta(minutes=5)
    same = merge_conditions(first, [Cond("Ready", "False", "B", "b")], 2, later)
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    assert same[0]["reason"] == "B"
    flipped = merge_conditions(same, [Cond("Ready", "True", "C", "c")], 2, later)
    assert flipped[0]["lastTransitionTime"] == "2026-11-27T12:05:00Z"


def test_status_is_stable_across_identical_reconciles() -> None:
    m = model(autoscaling={"minReplicas": 2, "maxReplicas": 2})
    obs = Observed(deployment=deployment())
    s1 = compute_model_status(m, obs, None, CTX, NOW)
    s2 = compute_model_status(m, obs, s1, CTX, NOW + timedelta(hours=1))
    assert s1 == s2


def test_invalid_spec_status_is_stalled() -> None:
    s = invalid_spec_status("spec.version: bad", 4, None, NOW)
    assert s["phase"] == "Failed"
    assert cond(s, "Stalled")["status"] == "True"
    assert cond(s, "Ready")["reason"] == "InvalidSpec"


def test_a_view_not_judged_yet_holds_the_rollout_as_pending_not_failed() -> None:
    m = model(features={"featureViewRef": "txns"})
    waiting = Cond("FeaturesResolved", "Unknown", "FeatureViewNotReady", "view 'txns' not Ready")
    s = compute_model_status(m, Observed(deployment=None, features=waiting), None, CTX, NOW)
    assert s["phase"] == "Pending"
    rolled = cond(s, "RolledOut")
    assert (rolled["status"], rolled["reason"]) == ("Unknown", "FeatureViewNotReady")
    assert "not rolled out yet" in rolled["message"]
    assert cond(s, "Stalled")["status"] == "False"
    assert cond(s, "Reconciling")["status"] == "True"


@pytest.mark.parametrize(
    ("status", "reason", "held"),
    [
        ("True", "SignatureMatches", False),
        ("False", "SignatureMismatch", True),
        ("False", "FeatureViewNotFound", True),
        ("Unknown", "FeatureViewNotReady", True),
        ("Unknown", "ArtifactUnreachable", False),  # the runtime checks at start-up
        ("Unknown", "ArtifactTooLarge", False),
    ],
)
def test_what_holds_a_rollout(status: str, reason: str, held: bool) -> None:
    assert holds_rollout(Cond("FeaturesResolved", status, reason, "...")) is held


CRASHING_POD = {
    "metadata": {"name": "fraud-7d9-abcde", "labels": {"rtml.dev/model": "fraud"}},
    "status": {
        "phase": "Running",
        "containerStatuses": [
            {
                "name": "runtime",
                "ready": False,
                "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 80s"}},
                "lastState": {
                    "terminated": {
                        "exitCode": 1,
                        "reason": "Error",
                        "message": "DigestMismatch: sha256 of s3://bucket/m.onnx is 1f2e",
                    }
                },
            }
        ],
    },
}
CRASH_WORDS = (
    "pod fraud-7d9-abcde: container runtime is waiting: CrashLoopBackOff (4 restarts); "
    "last exit code 1: DigestMismatch: sha256 of s3://bucket/m.onnx is 1f2e"
)


def test_a_degraded_model_says_which_pod_is_down_and_why() -> None:
    m = model(autoscaling={"minReplicas": 2, "maxReplicas": 2})
    obs = Observed(
        deployment=deployment(available=1, ready=1, conditions=[COMPLETE]), pods=[CRASHING_POD]
    )
    s = compute_model_status(m, obs, {"activeVersion": "v1"}, CTX, NOW)
    assert s["phase"] == "Degraded"
    ready = cond(s, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ReplicasUnavailable")
    assert ready["message"] == f"1 of 2 updated replicas are available; {CRASH_WORDS}"
    assert cond(s, "RolledOut")["message"] == ready["message"]
    assert cond(s, "Reconciling")["status"] == "False"
    assert cond(s, "Stalled")["status"] == "False"
    assert s["activeVersion"] == "v1"


def test_a_single_replica_model_losing_its_pod_is_degraded_not_progressing() -> None:
    m = model(autoscaling={"minReplicas": 1, "maxReplicas": 1})
    dep = deployment(replicas=1, updated=1, available=0, ready=0, conditions=[COMPLETE])
    s = compute_model_status(m, Observed(deployment=dep, pods=[]), None, CTX, NOW)
    assert s["phase"] == "Degraded"
    assert cond(s, "Ready")["reason"] == "ReplicasUnavailable"
    assert cond(s, "Ready")["message"] == "0 of 1 updated replicas are available"


def test_a_first_rollout_with_a_crashing_pod_progresses_and_says_why() -> None:
    m = model(autoscaling={"minReplicas": 2, "maxReplicas": 2})
    dep = deployment(available=0, ready=0, conditions=[PROGRESSING])
    s = compute_model_status(m, Observed(deployment=dep, pods=[CRASHING_POD]), None, CTX, NOW)
    assert s["phase"] == "Progressing"
    assert cond(s, "RolledOut")["message"].endswith(f"; {CRASH_WORDS}")
    assert cond(s, "Reconciling")["message"].endswith(f"; {CRASH_WORDS}")


def test_a_stuck_rollout_says_why_in_the_stalled_condition_too() -> None:
    m = model(autoscaling={"minReplicas": 2, "maxReplicas": 2})
    deadline = {**COMPLETE, "status": "False", "reason": "ProgressDeadlineExceeded"}
    dep = deployment(available=0, ready=0, conditions=[deadline])
    s = compute_model_status(m, Observed(deployment=dep, pods=[CRASHING_POD]), None, CTX, NOW)
    assert s["phase"] == "Failed"
    assert cond(s, "Ready")["reason"] == "ProgressDeadlineExceeded"
    assert cond(s, "Stalled")["message"].endswith(f"; {CRASH_WORDS}")


def test_a_ready_model_mentions_no_pod() -> None:
    m = model(autoscaling={"minReplicas": 2, "maxReplicas": 2})
    # Pods are not read when every replica is available; were they, Ready still wins.
    obs = Observed(deployment=deployment(conditions=[COMPLETE]), pods=[CRASHING_POD])
    s = compute_model_status(m, obs, None, CTX, NOW)
    assert s["phase"] == "Ready"
    assert "pod" not in cond(s, "Ready")["message"]


def test_the_same_pods_give_the_same_status() -> None:
    m = model(autoscaling={"minReplicas": 2, "maxReplicas": 2})
    obs = Observed(deployment=deployment(available=1, conditions=[COMPLETE]), pods=[CRASHING_POD])
    s1 = compute_model_status(m, obs, None, CTX, NOW)
    assert compute_model_status(m, obs, s1, CTX, NOW + timedelta(minutes=1)) == s1


@pytest.mark.parametrize(
    ("dep", "available"),
    [
        (None, False),
        (deployment(conditions=[COMPLETE]), True),
        (deployment(gen=2, observed=1), False),
        (deployment(updated=1, total=3), False),
        (deployment(available=1, conditions=[COMPLETE]), False),
        (deployment(replicas=3, updated=3, available=3, total=4), False),
    ],
)
def test_deployment_available_is_when_pods_are_not_read(dep: dict | None, available: bool) -> None:
    m = model(autoscaling={"minReplicas": 2, "maxReplicas": 2})
    assert deployment_available(m, dep) is available


def test_a_running_experiment_keeps_a_ready_model_reconciling() -> None:
    m = model(autoscaling={"minReplicas": 2, "maxReplicas": 2})
    obs = Observed(deployment=deployment(), experiment=("fraud-v2", "step 2 at 50%: analysing"))
    s = compute_model_status(m, obs, None, CTX, NOW)
    assert s["phase"] == "Ready"
    assert cond(s, "Ready")["status"] == "True"  # the champion serves
    reconciling = cond(s, "Reconciling")
    assert (reconciling["status"], reconciling["reason"]) == ("True", "ExperimentRunning")
    assert reconciling["message"] == "Experiment fraud-v2: step 2 at 50%: analysing"


def test_a_canary_about_to_start_is_work_under_way() -> None:
    m = model(autoscaling={"minReplicas": 2, "maxReplicas": 2})  # the champion, v1
    s = compute_model_status(
        m, Observed(deployment=deployment(), canary=Canary("fraud-v2", "v2")), None, CTX, NOW
    )
    reconciling = cond(s, "Reconciling")
    assert (reconciling["status"], reconciling["reason"]) == ("True", "CanaryPending")
    assert reconciling["message"] == "Experiment fraud-v2 is about to try v2"
    assert cond(s, "Stalled")["status"] == "False"


def test_a_rolled_back_canary_stalls_a_model_that_still_serves() -> None:
    m = model(autoscaling={"minReplicas": 2, "maxReplicas": 2})  # the champion, v1
    ended = Canary("fraud-v2", "v2", "RolledBack", "rolled back: over the gate: errorRate 0.2")
    s = compute_model_status(m, Observed(deployment=deployment(), canary=ended), None, CTX, NOW)
    assert (s["phase"], cond(s, "Ready")["status"]) == ("Ready", "True")  # v1 serves well
    assert cond(s, "Reconciling")["status"] == "False"
    stalled = cond(s, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "CanaryRolledBack")
    assert stalled["message"] == (
        "the canary of v2 ended RolledBack (Experiment fraud-v2: rolled back: over the gate: "
        "errorRate 0.2); v1 still serves; a new spec.version or spec.artifact starts another "
        "canary"
    )


UNVERIFIED = {"uri": "file:///models/m.onnx", "allowUnverified": True}


def test_a_pinned_model_says_its_artifact_is_verified() -> None:
    m = model(autoscaling={"minReplicas": 2, "maxReplicas": 2})
    artifact = cond(compute_model_status(m, Observed(deployment=deployment()), None, CTX, NOW),
                    "ArtifactUnverified")  # fmt: skip
    assert (artifact["status"], artifact["reason"]) == ("False", "DigestPinned")


def test_a_model_that_opts_out_of_the_digest_is_ready_with_a_warning() -> None:
    m = model(
        artifact=UNVERIFIED,
        fallback={"mode": "model", "artifact": {**UNVERIFIED, "uri": "pvc://models/b.onnx"}},
        autoscaling={"minReplicas": 2, "maxReplicas": 2},
    )
    s = compute_model_status(m, Observed(deployment=deployment()), None, CTX, NOW)
    # A warning, not a failure: kstatus (Ready, Reconciling, Stalled) sees a Model that is done.
    assert s["phase"] == "Ready"
    assert [(cond(s, t)["status"]) for t in ("Ready", "Reconciling", "Stalled")] == [
        "True",
        "False",
        "False",
    ]
    artifact = cond(s, "ArtifactUnverified")
    assert (artifact["status"], artifact["reason"]) == ("True", "AllowUnverified")
    assert artifact["message"] == (
        "spec.artifact (file:///models/m.onnx) has no sha256: its bytes are loaded without "
        "checking them, so whatever file is at that location serves; set its sha256 to pin it; "
        "spec.fallback.artifact (pvc://models/b.onnx) has no sha256: its bytes are loaded "
        "without checking them, so whatever file is at that location serves; set its sha256 to "
        "pin it"
    )
    assert artifact["observedGeneration"] == 3


def test_pinning_the_artifact_flips_the_warning_off() -> None:
    opted_out = model(artifact=UNVERIFIED)
    before = compute_model_status(opted_out, Observed(deployment=deployment()), None, CTX, NOW)
    later = NOW + timedelta(minutes=5)
    pinned = model(artifact={"uri": UNVERIFIED["uri"], "sha256": "e" * 64})
    after = compute_model_status(pinned, Observed(deployment=deployment()), before, CTX, later)
    artifact = cond(after, "ArtifactUnverified")
    assert (artifact["status"], artifact["reason"]) == ("False", "DigestPinned")
    assert artifact["lastTransitionTime"] == "2026-11-27T12:05:00Z"


def test_the_artifacts_an_experiment_or_a_kept_champion_load_unverified_are_named() -> None:
    m = model()  # pinned
    champion = m.serving("v0", ArtifactRecord(uri="file:///models/v0.onnx"))  # an old record
    holding = {
        "metadata": {"name": "fraud-ab"},
        "spec": {"candidate": {"version": "v2", "artifact": {**UNVERIFIED, "uri": "file:///c"}}},
    }
    assert unverified_artifacts(m, champion, holding) == [
        ("the champion's artifact (status.activeArtifact)", "file:///models/v0.onnx"),
        ("Experiment fraud-ab's spec.candidate.artifact", "file:///c"),
    ]
    # The spec's own artifact, when it is also the candidate (a canary), is named once.
    spec = model(artifact=UNVERIFIED)
    own = {"metadata": {"name": "fraud-v1"}, "spec": {"candidate": {"artifact": UNVERIFIED}}}
    assert unverified_artifacts(spec, spec, own) == [("spec.artifact", UNVERIFIED["uri"])]
    obs = Observed(deployment=deployment(), artifact=artifact_condition([]))
    s = compute_model_status(spec, obs, None, CTX, NOW)  # what the operator computed wins
    assert cond(s, "ArtifactUnverified")["status"] == "False"


STUCK = {
    "type": "Progressing",
    "status": "False",
    "reason": "ProgressDeadlineExceeded",
    "message": 'ReplicaSet "fraud-stream-5c8" has timed out progressing.',
}


@pytest.mark.parametrize(
    ("stream_deploy", "expected"),
    [
        (None, ("Unknown", "ConsumersNotCreated", "does not exist yet")),
        (deployment(available=2, updated=2), ("True", "ConsumersAvailable", "2 of 2 stream")),
        (deployment(gen=2, observed=1), ("False", "ConsumersUnavailable", "2 of 2")),  # stale
        (
            deployment(available=1, conditions=[STUCK]),
            ("False", "ConsumersUnavailable", "1 of 2 stream consumers available: ReplicaSet"),
        ),
    ],
)
def test_stream_ready_says_whether_every_consumer_runs(
    stream_deploy: dict | None, expected: tuple[str, str, str]
) -> None:
    m = model(stream={"replicas": 2})
    obs = Observed(deployment=deployment(), stream_deployment=stream_deploy)
    status = compute_model_status(m, obs, None, CTX, NOW)
    cond = get_condition(status["conditions"], "StreamReady")
    assert cond is not None
    assert (cond["status"], cond["reason"]) == expected[:2]
    assert expected[2] in cond["message"]
    # The predictor answers: Ready is its, whatever the consumers do.
    assert get_condition(status["conditions"], "Ready")["status"] == "True"


def test_no_stream_ready_without_spec_stream_and_it_goes_with_it() -> None:
    with_stream = compute_model_status(
        model(stream={}), Observed(deployment=deployment(), stream_deployment=deployment()),
        None, CTX, NOW,
    )  # fmt: skip
    assert get_condition(with_stream["conditions"], "StreamReady") is not None
    without = compute_model_status(
        model(), Observed(deployment=deployment()), with_stream, CTX, NOW
    )
    assert get_condition(without["conditions"], "StreamReady") is None
