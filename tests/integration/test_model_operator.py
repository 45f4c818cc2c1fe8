"""The Model operator against a real API server, KServe's real CRD and a real operator process."""

from __future__ import annotations

import json
import platform
import time
from typing import Any

import pytest

from tests.kube import (
    KSERVE_CRD,
    Kube,
    OperatorProcess,
    condition,
    install_crd_file,
    thirdparty_crd,
    wait_for,
)

pytestmark = pytest.mark.apiserver
DIGEST = "c" * 64
MODEL = ("rtml.dev/v1alpha1", "Model")
DEPLOY = ("apps/v1", "Deployment")
ISVC = ("serving.kserve.io/v1beta1", "InferenceService")
BENTOML_CHILDREN = [
    ("v1", "ConfigMap", "{}-rtml-config"),
    ("apps/v1", "Deployment", "{}"),
    ("v1", "Service", "{}"),
    ("policy/v1", "PodDisruptionBudget", "{}"),
    ("autoscaling/v2", "HorizontalPodAutoscaler", "{}"),
]


def model(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": "v1",
        "artifact": {"uri": "s3://bucket/m.onnx", "sha256": DIGEST},
        # cpu: an HPA whether or not an earlier test installed KEDA's CRD (with it, the
        # default metric, concurrency, becomes a ScaledObject).
        "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "metric": "cpu"},
    }
    body.update(spec)
    return {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name, "namespace": ns},
        "spec": body,
    }


def children(kube: Kube, name: str, ns: str) -> dict[str, dict[str, Any] | None]:
    return {
        kind: kube.get(av, kind, pattern.format(name), ns) for av, kind, pattern in BENTOML_CHILDREN
    }


def versions(kube: Kube, name: str, ns: str) -> dict[str, str]:
    """Each child's spec version: its generation where the kind keeps one (controllers write
    the status of Deployments, HPAs and PDBs: not a change of what the operator applied), else
    its resourceVersion."""
    return {
        k: str(v["metadata"].get("generation") or v["metadata"]["resourceVersion"])
        for k, v in children(kube, name, ns).items()
        if v
    }


def test_create_makes_owned_restricted_children_and_status(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    created = kube.create(model("fraud", namespace))
    uid = created["metadata"]["uid"]
    kids = wait_for(
        lambda: (c := children(kube, "fraud", namespace)) and all(c.values()) and c,
        30,
        what="all five children",
    )
    for kind, obj in kids.items():
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["uid"], ref["controller"]) == ("Model", uid, True), kind
        assert obj["metadata"]["labels"]["rtml.dev/model"] == "fraud"
        fields = {
            f["manager"]
            for f in obj["metadata"].get("managedFields", [])
            if f["operation"] == "Apply"
        }
        assert fields == {"rtml-operator"}, kind
    pod = kids["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    managed = kids["Deployment"]["metadata"]["managedFields"]
    ours = next(f for f in managed if f["manager"] == "rtml-operator")
    assert "f:replicas" not in ours["fieldsV1"]["f:spec"]  # the HPA owns replicas
    # The namespace enforces `restricted`: the ReplicaSet controller could create the pod.
    core = kube.res("v1", "Pod")
    pods = wait_for(lambda: core.get(namespace=namespace).items, 30, what="a predictor pod")
    assert pods[0]["spec"]["containers"][0]["image"] == "registry.local/rtml-runtime:test"

    m = wait_for(
        lambda: (o := kube.get(*MODEL, "fraud", namespace)) and condition(o, "RolledOut") and o,
        30,
        what="status",
    )
    assert m["status"]["observedGeneration"] == m["metadata"]["generation"]
    assert condition(m, "Ready")["status"] == "False"
    assert m["status"]["phase"] in ("Pending", "Progressing")
    assert m["status"]["url"] == f"http://fraud.{namespace}.svc.cluster.local"
    # No node here, so the pod never runs and the Model never turns Ready: Ready, rollouts and
    # lost pods on real pods are tests/integration/test_node.py's.


def test_update_changes_children_and_observed_generation(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.create(model("upd", namespace))
    wait_for(lambda: all(children(kube, "upd", namespace).values()), 30, what="children")
    before = children(kube, "upd", namespace)
    checksum = before["Deployment"]["spec"]["template"]["metadata"]["annotations"][
        "rtml.dev/config-checksum"
    ]
    kube.patch(
        *MODEL,
        "upd",
        namespace,
        {"spec": {"slo": {"p99LatencyMs": 20}, "autoscaling": {"maxReplicas": 7}}},
    )

    def updated() -> bool:
        c = children(kube, "upd", namespace)
        ann = c["Deployment"]["spec"]["template"]["metadata"]["annotations"]
        return (
            ann["rtml.dev/config-checksum"] != checksum
            and c["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] == 7
            and '"p99LatencyMs": 20' in c["ConfigMap"]["data"]["model.json"]
        )

    wait_for(updated, 30, what="children to follow the spec")
    m = wait_for(
        lambda: (
            (o := kube.get(*MODEL, "upd", namespace))
            and o["status"].get("observedGeneration") == o["metadata"]["generation"]
            and o
        ),
        30,
        what="observedGeneration to follow",
    )
    assert m["metadata"]["generation"] == 2


def test_noop_reconcile_writes_nothing(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.create(model("steady", namespace))
    wait_for(lambda: all(children(kube, "steady", namespace).values()), 30, what="children")
    wait_for(
        lambda: (
            (o := kube.get(*MODEL, "steady", namespace))
            and (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"]
            and condition(o, "RolledOut")
        ),
        30,
        what="the first status",
    )
    time.sleep(2)  # let the last event-driven reconcile finish

    def model_rv() -> str:
        return str(kube.get(*MODEL, "steady", namespace)["metadata"]["resourceVersion"])  # type: ignore[index]

    def quiet_window() -> tuple[int, float] | None:
        """10 s (> 3 resync periods of 3 s) in which 'steady' was resynced and the operator
        sent no write request at all (server-side apply of an unchanged child is one: issue
        12's "0 writes in a no-op resync"), and nothing of 'steady' changed. A window in which
        anything was written is tried again: the session's other Models may still settle."""
        before, rv = versions(kube, "steady", namespace), model_rv()
        logged = operator.log_path.stat().st_size
        writes = _writes(operator)
        time.sleep(10)
        # The resyncs really ran (a stalled operator writes nothing either): each is logged.
        with operator.log_path.open("rb") as f:
            f.seek(logged)
            lines = [
                json.loads(line) for line in f.read().decode().splitlines() if line.startswith("{")
            ]
        ours = ("Model resynced", "steady", namespace)
        resyncs = [
            x for x in lines if (x.get("message"), x.get("model"), x.get("namespace")) == ours
        ]
        assert len(resyncs) >= 2, f"only {len(resyncs)} resyncs of 'steady' in 10 s"
        written = _writes(operator) - writes
        if written:
            return None
        assert versions(kube, "steady", namespace) == before
        assert model_rv() == rv
        return len(resyncs), written

    wait_for(quiet_window, 60, 0, what="a resync window without a write request")


def _writes(operator: OperatorProcess) -> float:
    """Write requests (POST, PUT, PATCH, DELETE) the operator has sent, from its metrics."""
    prefix = "rtml_operator_api_request_duration_seconds_count{"
    return sum(
        value
        for key, value in _scrape(operator.metrics_url).items()
        if key.startswith(prefix) and any(f'verb="{v}"' in key for v in WRITE_VERBS)
    )


WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")


def test_a_model_that_opts_out_of_the_digest_rolls_out_with_a_warning_condition(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    unverified = {"uri": "file:///models/m.onnx", "allowUnverified": True}
    kube.create(model("unpinned", namespace, artifact=unverified))
    m = wait_for(
        lambda: (
            (o := kube.get(*MODEL, "unpinned", namespace))
            and condition(o, "ArtifactUnverified")
            and o
        ),
        30,
        what="the ArtifactUnverified condition",
    )
    warning = condition(m, "ArtifactUnverified")
    assert (warning["status"], warning["reason"]) == ("True", "AllowUnverified")
    assert warning["message"].startswith(
        "spec.artifact (file:///models/m.onnx) has no sha256: its bytes are loaded without "
        "checking them"
    )
    # Rolled out all the same: the runtime is told to load it unverified.
    cm = wait_for(
        lambda: kube.get("v1", "ConfigMap", "unpinned-rtml-config", namespace),
        30,
        what="the resolved config",
    )
    assert json.loads(cm["data"]["model.json"])["spec"]["artifact"] == {
        **unverified,
        "format": "onnx",
    }
    # Pinned, the warning goes (a merge patch: the opt-out removed with null).
    kube.patch(
        *MODEL,
        "unpinned",
        namespace,
        {"spec": {"artifact": {"sha256": DIGEST, "allowUnverified": None}}},
    )
    wait_for(
        lambda: (
            (o := kube.get(*MODEL, "unpinned", namespace))
            and condition(o, "ArtifactUnverified").get("reason") == "DigestPinned"
        ),
        30,
        what="ArtifactUnverified=False once the artifact is pinned",
    )


def test_hand_deleted_or_edited_child_is_restored(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.create(model("heal", namespace))
    wait_for(lambda: all(children(kube, "heal", namespace).values()), 30, what="children")
    old_uid = kube.get("v1", "Service", "heal", namespace)["metadata"]["uid"]  # type: ignore[index]
    kube.delete("v1", "Service", "heal", namespace)
    svc = wait_for(
        lambda: (
            (s := kube.get("v1", "Service", "heal", namespace))
            and s["metadata"]["uid"] != old_uid
            and s
        ),
        30,
        what="the Service to come back",
    )
    assert svc["metadata"]["ownerReferences"][0]["kind"] == "Model"

    kube.patch(
        "apps/v1",
        "Deployment",
        "heal",
        namespace,
        {
            "spec": {
                "template": {"spec": {"containers": [{"name": "runtime", "image": "evil/image:1"}]}}
            }
        },
    )
    wait_for(
        lambda: (
            kube.get(*DEPLOY, "heal", namespace)["spec"]["template"]["spec"][  # type: ignore[index]
                "containers"
            ][0]["image"]
            == "registry.local/rtml-runtime:test"
        ),
        30,
        what="the Deployment's image to be restored",
    )


def test_model_deletion_garbage_collects_children(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.create(model("gone", namespace))
    wait_for(lambda: all(children(kube, "gone", namespace).values()), 30, what="children")
    kube.delete(*MODEL, "gone", namespace)
    wait_for(
        lambda: not any(children(kube, "gone", namespace).values()),
        60,
        what="the garbage collector to delete every child",
    )


def test_switching_to_fixed_size_prunes_the_hpa(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.create(model("fixed", namespace))
    wait_for(lambda: all(children(kube, "fixed", namespace).values()), 30, what="children")
    kube.patch(
        *MODEL, "fixed", namespace, {"spec": {"autoscaling": {"minReplicas": 2, "maxReplicas": 2}}}
    )
    wait_for(
        lambda: kube.get("autoscaling/v2", "HorizontalPodAutoscaler", "fixed", namespace) is None,
        30,
        what="the HPA to be pruned",
    )
    wait_for(
        lambda: kube.get(*DEPLOY, "fixed", namespace)["spec"]["replicas"] == 2,
        30,  # type: ignore[index]
        what="replicas written once no autoscaler owns them",
    )


def test_kserve_backend_renders_a_valid_inference_service(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.create(
        model(
            "churn",
            namespace,
            backend="kserve",
            autoscaling={"minReplicas": 1, "maxReplicas": 4, "metric": "cpu", "target": 60},
        )
    )
    isvc = wait_for(lambda: kube.get(*ISVC, "churn", namespace), 30, what="the InferenceService")
    assert isvc["metadata"]["ownerReferences"][0]["kind"] == "Model"
    pred = isvc["spec"]["predictor"]
    assert (pred["minReplicas"], pred["maxReplicas"], pred["scaleMetric"], pred["scaleTarget"]) == (
        1,
        4,
        "cpu",
        60,
    )
    assert pred["containers"][0]["securityContext"]["runAsNonRoot"] is True
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert kube.get(*DEPLOY, "churn", namespace) is None
    # Status rolls up what KServe reports.
    kube.patch(
        *ISVC,
        "churn",
        namespace,
        {
            "status": {
                "url": "http://churn.example.com",
                "conditions": [
                    {
                        "type": "PredictorReady",
                        "status": "True",
                        "lastTransitionTime": "2026-11-27T00:00:00Z",
                    },
                    {
                        "type": "Ready",
                        "status": "True",
                        "lastTransitionTime": "2026-11-27T00:00:00Z",
                    },
                ],
            }
        },
        subresource="status",
    )
    m = wait_for(
        lambda: (
            (o := kube.get(*MODEL, "churn", namespace))
            and condition(o, "Ready").get("status") == "True"
            and o
        ),
        30,
        what="Ready from KServe",
    )
    assert m["status"]["url"] == "http://churn.example.com"
    assert condition(m, "RolledOut")["status"] == "True"


def test_kserve_backend_without_kserve_crd_says_so(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    crd = "inferenceservices.serving.kserve.io"
    kube.delete("apiextensions.k8s.io/v1", "CustomResourceDefinition", crd)
    try:
        wait_for(
            lambda: kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", crd) is None,
            60,
            what="KServe's CRD to be removed",
        )
        kube.create(model("nokserve", namespace, backend="kserve"))
        m = wait_for(
            lambda: (
                (o := kube.get(*MODEL, "nokserve", namespace))
                and condition(o, "Ready").get("reason") == "KServeNotInstalled"
                and o
            ),
            30,
            what="a KServeNotInstalled condition",
        )
        assert "not installed" in condition(m, "Ready")["message"]
        assert condition(m, "Stalled")["status"] == "True"
        assert operator.proc is not None
        assert operator.proc.poll() is None, "the operator must survive KServe being uninstalled"
    finally:
        install_crd_file(kube, thirdparty_crd(KSERVE_CRD))
    # Once KServe arrives the same Model converges without being touched.
    wait_for(
        lambda: kube.get(*ISVC, "nokserve", namespace),
        60,
        what="the InferenceService once the CRD is back",
    )


def test_a_model_the_quota_refuses_a_service_says_so_and_converges_once_it_may(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    """issue 12: a persistent server-side refusal must reach the Model's conditions, in the API
    server's words, and retries must go on (1,000 Models once had no status at all)."""
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "one-service", "namespace": namespace},
            "spec": {"hard": {"services": "1"}},
        }
    )
    wait_for(
        lambda: (
            (kube.get("v1", "ResourceQuota", "one-service", namespace) or {})
            .get("status", {})
            .get("hard")
        ),
        30,
        what="the quota controller to count the namespace",
    )
    kube.create(model("first", namespace))
    wait_for(lambda: kube.get("v1", "Service", "first", namespace), 30, what="the first Service")
    kube.create(model("second", namespace))
    m = wait_for(
        lambda: (
            (o := kube.get(*MODEL, "second", namespace))
            and condition(o, "Ready").get("reason") == "ApplyRejected"
            and o
        ),
        30,
        what="the second Model to say the API server refused its Service",
    )
    message = condition(m, "Ready")["message"]
    assert message.startswith("the API server refused Service second: "), message
    assert "exceeded quota: one-service" in message, message
    assert kube.get("v1", "Service", "second", namespace) is None
    kube.delete("v1", "ResourceQuota", "one-service", namespace)
    # Nothing touches the Model: the operator's retries (its resync) apply it once allowed.
    wait_for(
        lambda: kube.get("v1", "Service", "second", namespace),
        60,
        what="the second Service once the quota is gone",
    )
    wait_for(
        lambda: (
            condition(kube.get(*MODEL, "second", namespace) or {}, "Ready").get("reason")
            != "ApplyRejected"
        ),
        30,
        what="the condition to clear",
    )


def test_operator_killed_mid_reconcile_converges_after_restart(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    for i in range(5):
        kube.create(model(f"crash{i}", namespace))
    operator.kill()  # while it works through the five creations
    try:
        kube.patch(*MODEL, "crash0", namespace, {"spec": {"autoscaling": {"maxReplicas": 4}}})
    finally:
        operator.start()
    for i in range(5):
        wait_for(
            lambda i=i: all(children(kube, f"crash{i}", namespace).values()),
            60,
            what=f"crash{i}'s children after the restart",
        )
    wait_for(
        lambda: (
            kube.get("autoscaling/v2", "HorizontalPodAutoscaler", "crash0", namespace)["spec"][
                "maxReplicas"
            ]
            == 4
        ),
        30,
        what="the edit made while the operator was down",
    )
    m = kube.get(*MODEL, "crash0", namespace)
    assert m is not None
    wait_for(
        lambda: kube.get(*MODEL, "crash0", namespace)["status"]["observedGeneration"] == 2,  # type: ignore[index]
        30,
        what="observedGeneration after restart",
    )


def test_liveness_endpoint_reports_processing(operator: OperatorProcess) -> None:
    import json
    import urllib.request

    with urllib.request.urlopen(operator.liveness_url, timeout=5) as r:  # noqa: S310
        body = json.loads(r.read())
    assert body["processing"]["secondsSinceHeartbeat"] < 60


def test_keda_scaled_object_replaces_hpa_for_rps(
    kube: Kube, operator: OperatorProcess, keda_crd: str, namespace: str
) -> None:
    kube.create(
        model(
            "busy",
            namespace,
            autoscaling={"minReplicas": 1, "maxReplicas": 8, "metric": "rps", "target": 150},
        )
    )
    so = wait_for(
        lambda: kube.get("keda.sh/v1alpha1", "ScaledObject", "busy", namespace),
        30,
        what="a ScaledObject validated by KEDA's real CRD",
    )
    assert so["spec"]["maxReplicaCount"] == 8
    assert so["spec"]["triggers"][0]["metadata"]["threshold"] == "150"
    # An HPA from a first reconcile that had not seen KEDA's new CRD yet is pruned after the
    # ScaledObject is applied, in the same reconcile: a moment later, not at once.
    wait_for(
        lambda: kube.get("autoscaling/v2", "HorizontalPodAutoscaler", "busy", namespace) is None,
        30,
        what="no HPA beside the ScaledObject",
    )
    kube.patch(*MODEL, "busy", namespace, {"spec": {"autoscaling": {"metric": "cpu"}}})
    wait_for(
        lambda: kube.get("autoscaling/v2", "HorizontalPodAutoscaler", "busy", namespace),
        30,
        what="an HPA once the metric is cpu",
    )
    wait_for(
        lambda: kube.get("keda.sh/v1alpha1", "ScaledObject", "busy", namespace) is None,
        30,
        what="the ScaledObject to be pruned",
    )


EXPERIMENT = ("rtml.dev/v1alpha1", "Experiment")


def experiment(name: str, ns: str, model_ref: str, version: str = "v2") -> dict[str, Any]:
    return {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "modelRef": model_ref,
            "strategy": "canary",
            "candidate": {
                "version": version,
                "artifact": {"uri": f"s3://bucket/{version}.onnx", "sha256": "d" * 64},
            },
            "canary": {"steps": [20, 60], "stepInterval": "2s"},
            "analysis": {"metrics": [{"name": "errorRate", "max": 0.01}]},
        },
    }


def test_a_kserve_canary_splits_by_canary_traffic_percent_and_one_experiment_holds_a_model(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    """KServe's CRD accepts what the operator renders for a canary step; a second Experiment on
    the same Model waits with a condition; without Prometheus the first pauses, never promotes;
    deleting it puts the champion back and lets the second start."""
    kube.create(model("churn", namespace, backend="kserve"))
    wait_for(lambda: kube.get(*ISVC, "churn", namespace), 30, what="the InferenceService")
    kube.create(experiment("first", namespace, "churn"))
    isvc = wait_for(
        lambda: (
            (o := kube.get(*ISVC, "churn", namespace))
            and o["spec"]["predictor"].get("canaryTrafficPercent") == 20
            and o
        ),
        30,
        what="canaryTrafficPercent at the first step",
    )
    volumes = {v["name"]: v for v in isvc["spec"]["predictor"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "churn-rtml-config-candidate"
    cm = kube.get("v1", "ConfigMap", "churn-rtml-config-candidate", namespace)
    assert cm is not None
    assert json.loads(cm["data"]["model.json"])["spec"]["version"] == "v2"
    kube.create(experiment("second", namespace, "churn", version="v3"))
    second = wait_for(
        lambda: (
            (o := kube.get(*EXPERIMENT, "second", namespace))
            and condition(o, "Ready").get("reason") == "Pending"
            and o
        ),
        30,
        what="the second Experiment to wait",
    )
    assert "Experiment first already runs on Model churn" in condition(second, "Ready")["message"]
    first = wait_for(
        lambda: (
            (o := kube.get(*EXPERIMENT, "first", namespace))
            and o.get("status", {}).get("phase") == "Paused"
            and o
        ),
        60,
        what="the first to pause: Prometheus cannot answer",
    )
    assert first["status"]["pausedReason"] == "MetricsUnavailable"
    assert first["status"]["candidateWeight"] == 20  # held, never raised or promoted
    m = kube.get(*MODEL, "churn", namespace)
    assert m is not None
    assert m["status"]["experiment"] == "first"
    kube.delete(*EXPERIMENT, "first", namespace)
    wait_for(
        lambda: (
            kube.get(*EXPERIMENT, "second", namespace)["status"]["phase"]  # type: ignore[index]
            in ("Progressing", "Paused")
        ),
        60,
        what="the second Experiment to start once the first is gone",
    )
    # The first candidate's canary is there until the operator renders the second's: wait for
    # the candidate ConfigMap to hold v3, not for any canary.
    wait_for(
        lambda: (
            (cm := kube.get("v1", "ConfigMap", "churn-rtml-config-candidate", namespace))
            and json.loads(cm["data"]["model.json"])["spec"]["version"] == "v3"
        ),
        30,
        what="the second candidate's ConfigMap",
    )
    isvc = wait_for(
        lambda: (
            (o := kube.get(*ISVC, "churn", namespace))
            and o["spec"]["predictor"].get("canaryTrafficPercent") == 20
            and o["metadata"]["annotations"].get("rtml.dev/config-checksum")
            and o
        ),
        30,
        what="the second candidate's canary",
    )
    kube.delete(*EXPERIMENT, "second", namespace)
    isvc = wait_for(
        lambda: (
            (o := kube.get(*ISVC, "churn", namespace))
            and "canaryTrafficPercent" not in o["spec"]["predictor"]
            and o
        ),
        30,
        what="the champion alone once no Experiment runs",
    )
    assert isvc["spec"]["predictor"]["volumes"][0]["configMap"]["name"] == "churn-rtml-config"
    wait_for(
        lambda: kube.get("v1", "ConfigMap", "churn-rtml-config-candidate", namespace) is None,
        30,
        what="the candidate's ConfigMap pruned",
    )


def _scrape(url: str) -> dict[str, float]:
    """Every sample of a Prometheus text page, by its name and labels as written."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - the operator on loopback
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


def test_the_operators_metrics_move_when_models_change(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    before = _scrape(operator.metrics_url)
    info = f'rtml_build_info{{python="{platform.python_version()}",version="0.1.0"}}'
    assert before[info] == 1
    assert before["process_resident_memory_bytes"] > 0
    ok = 'rtml_operator_reconciles_total{kind="Model",result="ok"}'
    kube.create(model("counted", namespace))
    wait_for(lambda: _scrape(operator.metrics_url).get(ok, 0) > before.get(ok, 0), 30,
             what="a counted Model reconcile")  # fmt: skip
    after = _scrape(operator.metrics_url)
    duration = 'rtml_operator_reconcile_duration_seconds_count{kind="Model"}'
    assert after[duration] > before.get(duration, 0)
    applies = [k for k in after if k.startswith("rtml_operator_api_request_duration_seconds_count")]
    assert any('verb="PATCH"' in k and 'code="200"' in k for k in applies), applies
