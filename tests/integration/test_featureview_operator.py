"""FeatureViews against a real API server, a real operator process, a real Feast registry
and a real Redis online store.

The operator fixture (tests/kube.py) runs as in a cluster: Feast's SQL registry in a real
PostgreSQL and its own redis-server as the online store (`RTML_FEAST_*`); these tests read both
back through Feast's SDK, and the runtime reads the materialised rows from that Redis. The
registry serves every namespace, so each test names its view after its namespace.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from feast import FeatureStore
from feast.errors import FeatureViewNotFoundException

from rtml.contract import FeastProfile
from rtml.dev.postgres import PostgresServer
from rtml.features.store import make_store
from rtml.features.translate import feast_dtype, feast_name_for
from tests.kube import (
    Kube,
    OperatorProcess,
    condition,
    wait_for,
)
from tests.runtime_proc import REPO

pytestmark = [pytest.mark.apiserver, pytest.mark.feast, pytest.mark.redis]
FV = ("rtml.dev/v1alpha1", "FeatureView")
CRONJOB = ("batch/v1", "CronJob")


def fraud_view(build: Path) -> dict[str, Any]:
    """examples/fraud/model.yaml's FeatureView, reading the freshly built parquet file."""
    docs = yaml.safe_load_all((REPO / "examples/fraud/model.yaml").read_text())
    doc = next(d for d in docs if d["kind"] == "FeatureView")
    doc["spec"]["source"]["path"] = f"file://{build / 'features.parquet'}"
    return dict(doc)


def named(doc: dict[str, Any], name: str, ns: str) -> dict[str, Any]:
    return {**doc, "metadata": {"name": name, "namespace": ns}}


def profile(op: OperatorProcess) -> FeastProfile:
    """The operator's Feast profile, as its settings build it from the same environment."""
    env = op.env
    return FeastProfile(
        kind="redis",
        path=Path(env["RTML_FEAST_PATH"]),
        redis_url=env["RTML_FEAST_REDIS_URL"],
        registry=env["RTML_FEAST_REGISTRY"],
    )


@pytest.fixture
def store(operator: OperatorProcess) -> FeatureStore:
    return make_store(profile(operator))


def registered(store: FeatureStore, name: str) -> Any:
    try:
        return store.get_feature_view(feast_name_for(name), allow_registry_cache=False)
    except FeatureViewNotFoundException:
        return None


def wait_registered(kube: Kube, name: str, ns: str) -> dict[str, Any]:
    return dict(
        wait_for(
            lambda: (
                (fv := kube.get(*FV, name, ns))
                and condition(fv, "Registered").get("status") == "True"
                and fv["status"].get("observedGeneration") == fv["metadata"]["generation"]
                and fv
            ),
            60,
            what=f"FeatureView {name} to be registered",
        )
    )


def schema(view: Any) -> dict[str, Any]:
    return {f.name: f.dtype for f in view.features}


def test_apply_change_delete_round_trip_through_the_registry(
    kube: Kube, operator: OperatorProcess, namespace: str, fraud_build: Path, store: FeatureStore
) -> None:
    name = f"cards-{namespace}"
    doc = named(fraud_view(fraud_build), name, namespace)
    kube.create(doc)
    fv = wait_registered(kube, name, namespace)
    assert condition(fv, "Ready")["status"] == "True"
    assert condition(fv, "Materialized")["status"] == "Unknown"
    assert fv["status"]["featureNames"] == [f["name"] for f in doc["spec"]["features"]]
    # No finalizer: deleting it never waits for the operator (docs/gitops.md).
    assert "rtml.dev/operator" not in (fv["metadata"].get("finalizers") or [])

    view = registered(store, name)
    assert view is not None
    assert schema(view) == {f["name"]: feast_dtype(f["dtype"]) for f in doc["spec"]["features"]}
    assert view.entities == ["card"]
    assert [c.name for c in view.entity_columns] == ["card_id"]

    cronjob = wait_for(lambda: kube.get(*CRONJOB, f"{name}-materialize", namespace), 30)
    assert cronjob["spec"]["schedule"] == "*/15 * * * *"
    assert cronjob["metadata"]["ownerReferences"][0]["uid"] == fv["metadata"]["uid"]

    changed = [*doc["spec"]["features"][:3], {"name": "late_signal", "dtype": "DOUBLE"}]
    kube.patch(
        *FV,
        name,
        namespace,
        {"spec": {"features": changed, "materialization": {"schedule": "5 * * * *"}}},
    )
    wait_for(
        lambda: (v := registered(store, name)) and list(schema(v)) == [f["name"] for f in changed],
        60,
        what="the registry to hold the changed features",
    )
    wait_for(
        lambda: (
            (kube.get(*CRONJOB, f"{name}-materialize", namespace) or {})["spec"]["schedule"]
            == "5 * * * *"
        ),
        30,
        what="the CronJob to follow the schedule",
    )

    kube.delete(*FV, name, namespace)
    wait_for(lambda: kube.get(*FV, name, namespace) is None, 10, what="the view to go")
    wait_for(lambda: registered(store, name) is None, 30, what="its Feast view to go")


def test_an_invalid_source_is_refused_with_words(
    kube: Kube, operator: OperatorProcess, namespace: str, fraud_build: Path
) -> None:
    name = f"relative-{namespace}"
    doc = named(fraud_view(fraud_build), name, namespace)
    doc["spec"]["source"]["path"] = "file://build/features.parquet"  # no folder in a cluster
    kube.create(doc)
    fv = wait_for(
        lambda: (f := kube.get(*FV, name, namespace)) and condition(f, "Registered") and f,
        60,
        what="a Registered condition",
    )
    registered_cond = condition(fv, "Registered")
    assert (registered_cond["status"], registered_cond["reason"]) == ("False", "FeastRefused")
    assert "spec.source.path" in registered_cond["message"]
    assert condition(fv, "Stalled")["status"] == "True"


def test_the_materialize_now_annotation_makes_one_job_from_the_cronjob(
    kube: Kube, operator: OperatorProcess, namespace: str, fraud_build: Path
) -> None:
    """No node here: the Job is checked as an object; tests/integration/test_node.py runs it."""
    name = f"ondemand-{namespace}"
    kube.create(named(fraud_view(fraud_build), name, namespace))
    fv = wait_registered(kube, name, namespace)
    cronjob = wait_for(lambda: kube.get(*CRONJOB, f"{name}-materialize", namespace), 30)
    annotation = {"metadata": {"annotations": {"rtml.dev/materialize-now": "1"}}}
    kube.patch(*FV, name, namespace, annotation)
    jobs = kube.res("batch/v1", "Job")

    def made() -> list[Any]:
        return list(jobs.get(namespace=namespace).items)

    (job,) = wait_for(made, 60, what="a Job for the annotation")
    assert job.metadata.name.startswith(f"{name}-materialize-now-")
    (owner,) = job.metadata.ownerReferences
    assert (owner.kind, owner.uid) == ("CronJob", cronjob["metadata"]["uid"])
    template = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert job.spec.template.spec.containers[0].command == template["command"]
    wait_for(
        lambda: (kube.get(*FV, name, namespace) or {})["metadata"]["annotations"].get(
            "rtml.dev/materialized-for") == "1",
        30,
        what="the request marked done",
    )  # fmt: skip
    events = kube.res("v1", "Event").get(
        namespace=namespace, field_selector=f"involvedObject.uid={fv['metadata']['uid']}"
    )
    started = [e for e in events.items if e.reason == "MaterializationStarted"]
    assert len(started) == 1
    assert job.metadata.name in started[0].message
    time.sleep(3)  # later events and resyncs act on the same request no more
    kube.patch(*FV, name, namespace, {"metadata": {"labels": {"touched": "yes"}}})
    time.sleep(3)
    assert len(made()) == 1


@contextmanager
def registry_unreachable(postgres: PostgresServer) -> Iterator[None]:
    """The registry's PostgreSQL shut down (connections closed, new ones refused), then back."""
    postgres.stop()
    try:
        yield
    finally:
        postgres.start()


def test_a_view_deleted_during_a_registry_outage_is_swept_from_feast_once_it_is_back(
    kube: Kube,
    operator: OperatorProcess,
    postgres_server: PostgresServer,
    namespace: str,
    fraud_build: Path,
    store: FeatureStore,
) -> None:
    """The deletion never waits (no finalizer); the view's entry, which the DELETED event could
    not remove, is removed by the registry sweep once the registry answers again."""
    name = f"outage-{namespace}"
    kube.create(named(fraud_view(fraud_build), name, namespace))
    fv = wait_registered(kube, name, namespace)
    with registry_unreachable(postgres_server):
        kube.delete(*FV, name, namespace)
        wait_for(lambda: kube.get(*FV, name, namespace) is None, 10, what="the view to go")

        def warned() -> Any:
            events = kube.res("v1", "Event").get(
                namespace=namespace, field_selector=f"involvedObject.uid={fv['metadata']['uid']}"
            )
            return [e for e in events.items if e.reason == "RegistryCleanupSkipped"]

        (warning,) = wait_for(warned, 60, what="the Warning Event")
        assert warning.type == "Warning"
        assert "unreachable" in warning.message
        assert "sweep" in warning.message  # the DELETED event could not remove the entry
    wait_for(lambda: registered(store, name) is None, 60, what="the sweep to remove it")


def test_a_long_view_name_gets_its_cronjob(
    kube: Kube, operator: OperatorProcess, namespace: str, fraud_build: Path
) -> None:
    """Names past 40 characters made `<name>-materialize` longer than a CronJob may be (52)."""
    from rtml.api.featureview import FeatureView
    from rtml.operator.render.cronjob import cronjob_name

    name = f"card-transactions-aggregated-over-thirty-days-{namespace}"
    doc = named(fraud_view(fraud_build), name, namespace)
    kube.create(doc)
    wait_registered(kube, name, namespace)
    expected = cronjob_name(FeatureView.model_validate(doc))
    assert len(expected) <= 52 < len(f"{name}-materialize")
    cronjob = wait_for(lambda: kube.get(*CRONJOB, expected, namespace), 30, what="the CronJob")
    assert cronjob["spec"]["schedule"] == "*/15 * * * *"


def test_a_view_deleted_while_no_operator_ran_is_swept_by_the_next_one(
    kube: Kube, operator: OperatorProcess, namespace: str, fraud_build: Path, store: FeatureStore
) -> None:
    """The only way to find such a view is the registry. An operator with no FeatureView does
    not load Feast for it: it sweeps once in a short-lived process (rtml.operator.sweep)."""
    name = f"gone-{namespace}"
    kube.create(named(fraud_view(fraud_build), name, namespace))
    wait_registered(kube, name, namespace)

    def only_this_view() -> bool:  # earlier tests' namespaces may still be going
        views = kube.res(*FV).get().items
        return [(v.metadata.namespace, v.metadata.name) for v in views] == [(namespace, name)]

    wait_for(only_this_view, 120, 1, "the other tests' FeatureViews to be gone")
    operator.stop()
    try:
        kube.delete(*FV, name, namespace)
        wait_for(lambda: kube.get(*FV, name, namespace) is None, 10, what="the view to go")
        assert registered(store, name) is not None  # nobody removed it: no operator ran
        logged = operator.log_path.stat().st_size
    finally:
        operator.start()
    wait_for(lambda: registered(store, name) is None, 60, what="the sweep to remove it")

    def child_swept() -> bool:
        with operator.log_path.open("rb") as f:
            f.seek(logged)
            return b'"message": "Feast registry swept"' in f.read()

    # Said only by `rtml feast-sweep`: the sweep ran in a process of its own.
    wait_for(child_swept, 30, what="the short-lived sweep's log line")
