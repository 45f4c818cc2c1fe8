"""The FeatureView side of the operator, pure parts: the CronJob renderer and status semantics."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from rtml.api.featureview import FeatureView
from rtml.contract import FeastProfile, FeastSecretRef, SettingsError
from rtml.operator.conditions import Cond, get_condition
from rtml.operator.featureview_status import RegistryFacts, compute_feature_view_status
from rtml.operator.render.container import CONTAINER_SECURITY_CONTEXT, POD_SECURITY_CONTEXT
from rtml.operator.render.context import RenderContext
from rtml.operator.render.cronjob import (
    cronjob_name,
    job_from_cronjob,
    render_materialization_cronjob,
)
from rtml.operator.settings import OperatorSettings

pytestmark = pytest.mark.unit
CTX = RenderContext(
    runtime_image="registry.local/rtml:test",
    feast=FeastProfile.model_construct(
        kind="redis", registry="postgresql://u:pw@r/db", path="/var/lib/rtml/feast"
    ),
    feast_secret=FeastSecretRef(name="feast-credentials"),
)
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def view(**materialization: Any) -> FeatureView:
    return FeatureView.model_validate(
        {
            "metadata": {"name": "card-features", "namespace": "ml", "uid": "u-1", "generation": 2},
            "spec": {
                "entity": {"name": "card", "joinKey": "card_id"},
                "features": [{"name": "amount", "dtype": "FLOAT"}],
                "source": {"type": "file", "path": "s3://b/f.parquet"},
                "materialization": materialization,
            },
        }
    )


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


@pytest.mark.parametrize(
    ("spec", "schedule", "suspend"),
    [
        ({}, "*/15 * * * *", False),
        ({"schedule": "0 * * * *", "enabled": False}, "0 * * * *", True),
    ],
)
def test_cronjob_follows_the_spec(spec: dict[str, Any], schedule: str, suspend: bool) -> None:
    cj = render_materialization_cronjob(view(**spec), CTX)
    assert (cj["apiVersion"], cj["kind"]) == ("batch/v1", "CronJob")
    assert cj["spec"]["schedule"] == schedule
    assert cj["spec"]["suspend"] is suspend
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"


def test_cronjob_runs_materialize_with_the_store_env_under_restricted() -> None:
    cj = render_materialization_cronjob(view(), CTX)
    (ref,) = cj["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
        "FeatureView",
        "card-features",
        "u-1",
        True,
    )
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.local/rtml:test"
    assert container["command"] == ["rtml", "materialize", "card-features", "--namespace", "ml"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RTML_FEAST_STORE"] == "redis"
    # The registry URL is a credential: a reference to the Secret, never the value.
    (registry,) = [e for e in container["env"] if e["name"] == "RTML_FEAST_REGISTRY"]
    assert registry == {
        "name": "RTML_FEAST_REGISTRY",
        "valueFrom": {"secretKeyRef": {"name": "feast-credentials", "key": "registry"}},
    }
    assert container["securityContext"] == CONTAINER_SECURITY_CONTEXT
    assert pod["securityContext"] == POD_SECURITY_CONTEXT
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["RTML_FEAST_PATH"] in mounts  # the root filesystem is read-only


def test_registered_view_is_ready_and_materialized_unknown_until_a_run() -> None:
    facts = RegistryFacts(feast_name="card_features", feature_names=["amount"])
    status = compute_feature_view_status(2, facts, None, NOW)
    assert conditions(status) == {
        "Registered": ("True", "Applied"),
        "Materialized": ("Unknown", "NotYetRun"),
        "Ready": ("True", "Applied"),
        "Reconciling": ("False", "Settled"),
        "Stalled": ("False", "NotStalled"),
    }
    assert status["featureNames"] == ["amount"]
    assert status["observedGeneration"] == 2
    assert "lastMaterialization" not in status


def test_a_run_sets_last_materialization() -> None:
    end = datetime(2026, 11, 27, 11, 45, tzinfo=UTC)
    facts = RegistryFacts(feast_name="v", feature_names=["a"], last_materialization=end)
    status = compute_feature_view_status(2, facts, None, NOW)
    assert status["lastMaterialization"] == "2026-11-27T11:45:00Z"
    assert conditions(status)["Materialized"] == ("True", "Materialized")


def test_a_refused_view_is_stalled_with_words() -> None:
    refused = Cond("Registered", "False", "FeastRefused", "Feast refused the view: bad path")
    status = compute_feature_view_status(2, RegistryFacts(refused=refused), None, NOW)
    got = conditions(status)
    assert got["Ready"] == ("False", "FeastRefused")
    assert got["Stalled"] == ("True", "FeastRefused")
    assert "bad path" in (get_condition(status["conditions"], "Ready") or {})["message"]


def test_an_outage_keeps_the_last_verdict_and_generation() -> None:
    before = compute_feature_view_status(
        2, RegistryFacts(feast_name="v", feature_names=["a"]), None, NOW
    )
    later = datetime(2026, 11, 27, 13, 0, tzinfo=UTC)
    status = compute_feature_view_status(
        3, RegistryFacts(unreachable="the Feast registry is unreachable"), before, later
    )
    got = conditions(status)
    assert got["Registered"] == ("True", "Applied")
    assert got["Ready"] == ("True", "Applied")
    assert got["Reconciling"] == ("True", "RegistryUnavailable")
    assert status["observedGeneration"] == 2  # generation 3 never reached Feast
    assert status["featureNames"] == ["a"]
    ready = get_condition(status["conditions"], "Ready") or {}
    assert ready["lastTransitionTime"] == "2026-11-27T12:00:00Z"


def test_a_long_view_name_still_makes_a_valid_distinct_cronjob_name() -> None:
    from rtml.operator.render.cronjob import CRONJOB_NAME_MAX, cronjob_name

    def named(name: str) -> FeatureView:
        return view().model_copy(
            update={"metadata": view().metadata.model_copy(update={"name": name})}
        )

    assert cronjob_name(named("card-features")) == "card-features-materialize"
    exact = "v" * (CRONJOB_NAME_MAX - len("-materialize"))
    assert cronjob_name(named(exact)) == f"{exact}-materialize"
    long_a = "transactions-by-card-and-merchant-over-thirty-days-a"
    long_b = "transactions-by-card-and-merchant-over-thirty-days-b"
    names = {cronjob_name(named(n)) for n in (long_a, long_b, "x" * 253)}
    assert len(names) == 3
    for name in names:
        assert len(name) <= CRONJOB_NAME_MAX
        assert name.endswith("-materialize")
        assert name[0].isalnum()
        assert "--" not in name.replace("-materialize", "")
    job = render_materialization_cronjob(named(long_a), CTX)
    assert job["metadata"]["name"] == cronjob_name(named(long_a))
    longest = render_materialization_cronjob(named("x" * 253), CTX)
    pod_labels = longest["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    for labels in (longest["metadata"]["labels"], pod_labels):
        assert all(len(v) <= 63 for v in labels.values()), labels


def test_the_job_mounts_the_volumes_file_sources_live_on() -> None:
    offline = {"name": "offline", "persistentVolumeClaim": {"claimName": "offline-data"}}
    mount = {"name": "offline", "mountPath": "/data", "readOnly": True}
    ctx = replace(CTX, materialize_volumes=(offline,), materialize_volume_mounts=(mount,))
    pod = render_materialization_cronjob(view(), ctx)["spec"]["jobTemplate"]["spec"]["template"]
    assert offline in pod["spec"]["volumes"]
    assert mount in pod["spec"]["containers"][0]["volumeMounts"]
    assert {v["name"] for v in pod["spec"]["volumes"]} == {"tmp", "feast", "offline"}


@pytest.mark.parametrize(
    ("volumes", "mounts", "message"),
    [
        ([{"emptyDir": {}}], [], r"^RTML_MATERIALIZE_VOLUMES\[0\]: a volume needs a name$"),
        ([{"name": "tmp", "emptyDir": {}}], [], r"RTML_MATERIALIZE_VOLUMES\[0\]: the name 'tmp'"),
        ([], [{"name": "data", "mountPath": "/d"}], r"MOUNTS\[0\]: mounts 'data', which RTML_"),
        ([{"name": "d"}], [{"name": "d", "mountPath": "rel"}], r"MOUNTS\[0\]: mountPath must"),
        ([{"name": "d"}], [{"name": "d", "mountPath": "/tmp/"}], r"the Job's own /tmp"),
    ],
)
def test_bad_materialization_volumes_stop_the_operator_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    volumes: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
    message: str,
) -> None:
    monkeypatch.setenv("RTML_MATERIALIZE_VOLUMES", json.dumps(volumes))
    monkeypatch.setenv("RTML_MATERIALIZE_VOLUME_MOUNTS", json.dumps(mounts))
    with pytest.raises(SettingsError, match=message):
        OperatorSettings.load()


def test_materialize_now_is_one_job_made_from_the_cronjob_per_request() -> None:
    cronjob = render_materialization_cronjob(view(), CTX)
    cronjob["metadata"]["uid"] = "cj-1"
    job = job_from_cronjob(cronjob, "1764640000")
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert job["spec"] == cronjob["spec"]["jobTemplate"]["spec"]  # the same pod, volumes and all
    assert job["metadata"]["labels"] == cronjob["spec"]["jobTemplate"]["metadata"]["labels"]
    (owner,) = job["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("CronJob", cronjob_name(view()), "cj-1")
    assert job["metadata"]["annotations"] == {"cronjob.kubernetes.io/instantiate": "manual"}
    assert job["metadata"]["name"].startswith("card-features-materialize-now-")
    assert job_from_cronjob(cronjob, "1764640000")["metadata"]["name"] == job["metadata"]["name"]
    assert job_from_cronjob(cronjob, "again")["metadata"]["name"] != job["metadata"]["name"]
    long = render_materialization_cronjob(
        FeatureView.model_validate({**view().model_dump(by_alias=True),
                                    "metadata": {"name": "x" * 253, "namespace": "ml"}}), CTX
    )  # fmt: skip
    long["metadata"]["uid"] = "cj-2"
    assert len(job_from_cronjob(long, "1")["metadata"]["name"]) <= 63
