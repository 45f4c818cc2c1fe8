"""GitOps against a real API server and a real operator process: which objects carry the
operator's finalizer, a namespace deleted after the operator is gone, and the chart's Argo CD
health checks (run by lua5.1, tests/argocd.py) on the objects as the API server returns them.
docs/gitops.md.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.argocd import health
from tests.kube import Kube, OperatorProcess, condition, wait_for

pytestmark = pytest.mark.apiserver
API = "rtml.dev/v1alpha1"
MODEL = (API, "Model")
VIEW = (API, "FeatureView")
EXPERIMENT = (API, "Experiment")
FINALIZER = "rtml.dev/operator"


def model(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Model",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "version": "v1",
            "artifact": {"uri": "s3://bucket/m.onnx", "sha256": "c" * 64},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
            **spec,
        },
    }


def experiment(name: str, ns: str, model_ref: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "modelRef": model_ref,
            "strategy": "canary",
            "candidate": {
                "version": "v2",
                "artifact": {"uri": "s3://bucket/v2.onnx", "sha256": "d" * 64},
            },
            "canary": {"steps": [20, 60], "stepInterval": "1m"},
            "analysis": {"metrics": [{"name": "errorRate", "max": 0.01}]},
        },
    }


def view(name: str, ns: str, path: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "FeatureView",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "entity": {"name": "card", "joinKey": "card_id"},
            "features": [{"name": "amount", "dtype": "FLOAT"}],
            "source": {"type": "file", "path": path},
        },
    }


def observed(kube: Kube, what: tuple[str, str], name: str, ns: str) -> dict[str, Any]:
    """The object once the operator has written a status for its current generation."""
    return dict(
        wait_for(
            lambda: (
                (o := kube.get(*what, name, ns))
                and (o.get("status") or {}).get("conditions")
                and o["status"].get("observedGeneration", o["metadata"]["generation"])
                == o["metadata"]["generation"]
                and o
            ),
            60,
            what=f"{what[1]} {name}'s status",
        )
    )


def running(kube: Kube, name: str, ns: str) -> dict[str, Any]:
    return dict(
        wait_for(
            lambda: (
                (o := kube.get(*EXPERIMENT, name, ns))
                and (o.get("status") or {}).get("phase") == "Progressing"
                and o
            ),
            60,
            what=f"Experiment {name} to run",
        )
    )


def finalizers(obj: dict[str, Any] | None) -> list[str]:
    return list(((obj or {}).get("metadata") or {}).get("finalizers") or [])


def test_no_rtml_object_carries_the_operators_finalizer(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.create(model("plain", namespace))
    kube.create(model("kserved", namespace, backend="kserve"))  # polled, not a daemon
    kube.create(experiment("trial", namespace, "plain"))
    observed(kube, MODEL, "plain", namespace)
    observed(kube, MODEL, "kserved", namespace)
    running(kube, "trial", namespace)
    # The periodic work (resync every 3 s, tick and KServe poll every 1 s here) has run too.
    wait_for(
        lambda: (
            (kube.get(*EXPERIMENT, "trial", namespace) or {})["status"].get("lastVerdict")
            == "waiting for every ready pod to apply 20%"
        ),
        30,
        what="the Experiment's tick",
    )
    for what, name in ((MODEL, "plain"), (MODEL, "kserved"), (EXPERIMENT, "trial")):
        assert finalizers(kube.get(*what, name, namespace)) == [], f"{what[1]} {name}"
    name = f"refused-{namespace}"  # the Feast registry is shared: a name per test namespace
    kube.create(view(name, namespace, "file://build/features.parquet"))
    fv = wait_for(
        lambda: ((o := kube.get(*VIEW, name, namespace)) or {}).get("status") and o,
        60,
        what="the FeatureView's status",
    )
    assert finalizers(fv) == []  # its Feast entry goes on the DELETED event and by the sweep
    kube.delete(*VIEW, name, namespace)
    wait_for(lambda: kube.get(*VIEW, name, namespace) is None, 10, what="the view to go")


def test_a_namespace_is_deleted_after_the_operator_is_gone(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    """What `helm uninstall` then `kubectl delete namespace` does: nothing waits for the
    operator (before, Kopf's finalizer on every Model and running Experiment held it)."""
    kube.create(model("orphan", namespace, backend="kserve"))
    kube.create(experiment("orphan-trial", namespace, "orphan"))
    kube.create(view(f"orphan-{namespace}", namespace, "file://build/features.parquet"))
    observed(kube, MODEL, "orphan", namespace)
    running(kube, "orphan-trial", namespace)
    wait_for(lambda: (kube.get(*VIEW, f"orphan-{namespace}", namespace) or {}).get("status"),
             60, what="the FeatureView's status")  # fmt: skip
    operator.stop()
    try:
        kube.delete("v1", "Namespace", namespace)
        wait_for(
            lambda: kube.get("v1", "Namespace", namespace) is None,
            60,  # issue 11: helm uninstall, then the namespace goes within 60 s
            what="the namespace to be deleted without the operator",
        )
    finally:
        operator.start()


def test_argo_cd_health_of_the_objects_the_api_server_returns(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    # No node here: a bentoml Model's pods never run, so it stays rolling out.
    kube.create(model("fraud", namespace))
    fraud = observed(kube, MODEL, "fraud", namespace)
    assert condition(fraud, "Reconciling")["status"] == "True"
    status, message = health(fraud)
    assert status == "Progressing"
    assert message == condition(fraud, "Reconciling")["message"]

    kube.create(model("orphaned", namespace, features={"featureViewRef": "missing"}))
    orphaned = observed(kube, MODEL, "orphaned", namespace)
    assert health(orphaned) == ("Degraded", condition(orphaned, "Stalled")["message"])

    name = f"refused-{namespace}"
    kube.create(view(name, namespace, "file://build/features.parquet"))  # no folder in a cluster
    refused = observed(kube, VIEW, name, namespace)
    status, message = health(refused)
    assert status == "Degraded"
    assert "spec.source.path" in message
    kube.delete(*VIEW, name, namespace)

    kube.create(experiment("trial", namespace, "fraud"))
    assert health(running(kube, "trial", namespace))[0] == "Progressing"
    kube.patch(
        *EXPERIMENT, "trial", namespace, {"metadata": {"annotations": {"rtml.dev/pause": "true"}}}
    )
    paused = wait_for(
        lambda: (
            (o := kube.get(*EXPERIMENT, "trial", namespace))["status"]["phase"] == "Paused"  # type: ignore[index]
            and o
        ),
        30,
        what="the Experiment to pause",
    )
    assert health(paused) == (
        "Suspended",
        "Paused at 20% by request: rtml experiment resume trial "
        "(or remove the rtml.dev/pause annotation)",
    )
    kube.patch(
        *EXPERIMENT, "trial", namespace, {"metadata": {"annotations": {"rtml.dev/abort": "true"}}}
    )
    aborted = wait_for(
        lambda: (
            (o := kube.get(*EXPERIMENT, "trial", namespace))["status"]["phase"] == "Aborted"  # type: ignore[index]
            and o
        ),
        30,
        what="the Experiment to abort",
    )
    assert health(aborted) == ("Degraded", "Aborted: aborted")
    # Edited after its end (in Git): observed, and still what it was, not Progressing for ever.
    kube.patch(*EXPERIMENT, "trial", namespace, {"spec": {"canary": {"steps": [10, 60]}}})
    edited = observed(kube, EXPERIMENT, "trial", namespace)
    assert edited["metadata"]["generation"] == 2
    assert health(edited) == ("Degraded", "Aborted: aborted")
