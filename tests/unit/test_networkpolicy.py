"""The NetworkPolicy a bentoml Model owns: ingress from its namespace, monitoring and the
operator; egress to DNS and the ports of the feature store, registry and artifact store."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from rtml.api.traffic import TrafficPlan
from rtml.contract import HTTP_PORT, FeastProfile
from rtml.operator.render import RenderContext, render_model_children
from rtml.operator.render.model import OWNED_KINDS
from rtml.operator.render.networkpolicy import render_network_policy
from tests.unit.helpers import DIGEST, model

pytestmark = pytest.mark.unit
REDIS = FeastProfile(kind="redis", redis_url="redis://redis.rtml.svc:6380/0")
CTX = RenderContext(feast=REDIS, operator_namespace="rtml-system")


def view(source: str = "file") -> dict[str, Any]:
    return {"metadata": {"name": "cards"}, "spec": {"source": {"type": source}}}


def egress_ports(policy: dict[str, Any]) -> set[tuple[str, int]]:
    return {(p["protocol"], p["port"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}


def test_the_policy_selects_the_models_pods_and_is_owned_by_it() -> None:
    policy = render_network_policy(model(), CTX)
    assert policy is not None
    assert (policy["apiVersion"], policy["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
    meta = policy["metadata"]
    assert (meta["name"], meta["namespace"]) == ("fraud-rtml", "ml")
    assert meta["ownerReferences"][0]["kind"] == "Model"
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {"rtml.dev/model": "fraud", "app.kubernetes.io/component": "predictor"}
    }
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert ("networking.k8s.io/v1", "NetworkPolicy") in OWNED_KINDS


@pytest.mark.parametrize(
    ("ctx", "namespaces"),
    [
        (CTX, ["monitoring", "rtml-system"]),
        (RenderContext(), ["monitoring"]),  # `rtml render`: no operator namespace known
        (RenderContext(monitoring_namespace="obs", operator_namespace="ops"), ["obs", "ops"]),
        (RenderContext(operator_namespace="ml"), ["monitoring"]),  # ml: already its namespace
    ],
)
def test_ingress_to_the_runtime_port_only_from_the_admitted_namespaces(
    ctx: RenderContext, namespaces: list[str]
) -> None:
    policy = render_network_policy(model(), ctx)
    assert policy is not None
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": HTTP_PORT}]
    same, *others = rule["from"]
    assert same == {"podSelector": {}}
    assert [o["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for o in others] == namespaces  # fmt: skip


@pytest.mark.parametrize(
    ("ctx", "feature_view", "artifact", "env", "ports"),
    [
        # No FeatureView: no store; an s3 artifact over HTTPS.
        (CTX, None, "s3://bucket/m.onnx", [], {443}),
        # Reads a view from Redis on its own port.
        (CTX, view(), "pvc://models/m.onnx", [], {6380}),
        (RenderContext(), view(), "pvc://models/m.onnx", [], set()),  # sqlite: a local file
        # A push view also writes through the SQL registry (its port, not its secret URL).
        (
            RenderContext(
                feast=FeastProfile(
                    kind="redis",
                    registry=SecretStr("postgresql+psycopg://feast:pw@pg.rtml.svc/feast"),
                )
            ),
            view("push"),
            "http://models.local:8000/m.onnx",
            [],
            {6379, 5432, 8000},
        ),
        # An S3-compatible store on its own endpoint.
        (
            CTX,
            None,
            "s3://bucket/m.onnx",
            [{"name": "AWS_ENDPOINT_URL", "value": "http://minio.store:9000"}],
            {443, 9000},
        ),
    ],
)
def test_egress_to_dns_and_the_ports_the_runtime_needs(
    ctx: RenderContext,
    feature_view: dict[str, Any] | None,
    artifact: str,
    env: list[dict[str, str]],
    ports: set[int],
) -> None:
    m = model(artifact={"uri": artifact, "sha256": DIGEST}, runtime={"env": env})
    policy = render_network_policy(m, ctx, feature_view)
    assert policy is not None
    dns = {("UDP", 53), ("TCP", 53)}
    assert egress_ports(policy) == dns | {("TCP", p) for p in ports}
    # Ports, never hosts: no rule names a peer (why: render/networkpolicy.py).
    assert all("to" not in rule for rule in policy["spec"]["egress"])


def test_a_running_candidates_artifact_is_reachable_too() -> None:
    plan = TrafficPlan.model_validate(
        {
            "experiment": "canary-v2",
            "strategy": "canary",
            "candidate": {
                "version": "v2",
                "artifact": {"uri": "https://models.example/v2.onnx", "sha256": DIGEST},
            },
            "weight": 10,
        }
    )
    m = model(artifact={"uri": "pvc://models/m.onnx", "sha256": DIGEST})
    policy = render_network_policy(m, CTX, None, plan)
    assert policy is not None
    assert ("TCP", 443) in egress_ports(policy)


@pytest.mark.parametrize(("enabled", "backend"), [(False, "bentoml"), (True, "kserve")])
def test_no_policy_when_off_or_for_kserve(enabled: bool, backend: str) -> None:
    ctx = RenderContext(network_policy=enabled)
    kinds = [o["kind"] for o in render_model_children(model(backend=backend), ctx)]
    assert "NetworkPolicy" not in kinds


def test_a_bentoml_model_owns_its_policy_by_default() -> None:
    kinds = [o["kind"] for o in render_model_children(model(), RenderContext())]
    assert kinds[-1] == "NetworkPolicy"
