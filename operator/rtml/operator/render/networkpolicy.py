"""The NetworkPolicy of a bentoml Model's pods: who may reach the runtime, and what it may reach.

Ingress to the runtime port from the Model's own namespace, the monitoring namespace (Prometheus
scrapes /metrics) and the operator's namespace. Egress to DNS, the feature store, the SQL
registry (push views only) and the artifact store. Which CNI enforces it: docs/network-policy.md.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from rtml.api.model import Model
from rtml.api.traffic import CHAMPION_ONLY, TrafficPlan
from rtml.contract import HTTP_PORT, STREAM_METRICS_PORT, parse_redis_url
from rtml.operator.render.context import RenderContext
from rtml.operator.render.meta import object_meta, selector_labels

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace
DEFAULT_PORTS = {"http": 80, "https": 443, "s3": 443, "gs": 443}
REGISTRY_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306}
S3_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def network_policy_name(model: Model) -> str:
    return f"{model.metadata.name}-rtml"


def _url_port(url: str, defaults: dict[str, int]) -> int | None:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0].lower()  # postgresql+psycopg -> postgresql
    try:
        port = parts.port
    except ValueError:
        return None  # the runtime fails on it by itself, with the URL named
    return port or defaults.get(scheme)


def _from_namespace(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: name}}}


def _tcp(port: int) -> dict[str, Any]:
    return {"protocol": "TCP", "port": port}


def artifact_ports(model: Model, plan: TrafficPlan = CHAMPION_ONLY) -> list[int]:
    """TCP ports the runtime downloads its artifacts from: the champion's and the running
    candidate's (both load in the same pod); pvc:// and file:// need none."""
    uris = [model.spec.artifact.uri]
    if plan.candidate is not None:
        uris.append(plan.candidate.artifact.uri)
    ports = {p for uri in uris if (p := _url_port(uri, DEFAULT_PORTS)) is not None}
    if any(uri.startswith("s3://") for uri in uris):
        # An S3-compatible store (MinIO, Ceph) is named by the SDK's endpoint variable.
        for env in model.spec.runtime.env:
            if env.name in S3_ENDPOINT_VARIABLES and env.value:
                port = _url_port(env.value, DEFAULT_PORTS)
                ports |= {port} if port is not None else set()
    return sorted(ports)


def store_ports(ctx: RenderContext, feature_view: dict[str, Any] | None) -> list[int]:
    """TCP ports of the Feast profile the Model's pods talk to: Redis when it reads a view, and
    the SQL registry when that view takes pushed rows (the only predictor given the registry)."""
    if feature_view is None:
        return []
    ports: set[int] = set()
    if ctx.feast.kind == "redis":
        ports.add(parse_redis_url(ctx.feast.redis_url).port or 6379)
    source = (feature_view.get("spec") or {}).get("source") or {}
    if source.get("type") == "push":
        port = _url_port(ctx.feast.registry_url, REGISTRY_PORTS)
        ports |= {port} if port is not None else set()
    return sorted(ports)


def render_network_policy(
    model: Model,
    ctx: RenderContext,
    feature_view: dict[str, Any] | None = None,
    plan: TrafficPlan = CHAMPION_ONLY,
) -> dict[str, Any] | None:
    """The Model's NetworkPolicy, or None when the operator renders none (`network_policy`)."""
    if not ctx.network_policy:
        return None
    # The feature store, registry and artifact store are addressed by host names that resolve
    # to a Service's cluster IP or outside the cluster; a NetworkPolicy matches pods by label
    # or addresses by CIDR after the Service's translation, neither of which the operator knows
    # of them. So their ports are allowed to any address: still no other port leaves the pod.
    ports = sorted({*store_ports(ctx, feature_view), *artifact_ports(model, plan)})
    return _policy(model, ctx, network_policy_name(model), selector_labels(model), HTTP_PORT, ports)


def render_stream_network_policy(
    model: Model, ctx: RenderContext, pod_labels: dict[str, str]
) -> dict[str, Any] | None:
    """spec.stream's consumers' NetworkPolicy: only their metrics port in; out, DNS, the
    online store's Redis (where the streams and windows are) and the champion's artifact."""
    if not ctx.network_policy:
        return None
    redis = parse_redis_url(ctx.feast.redis_url).port or 6379
    ports = sorted({redis, *artifact_ports(model)})
    name = f"{network_policy_name(model)}-stream"
    return _policy(model, ctx, name, pod_labels, STREAM_METRICS_PORT, ports)


def _policy(
    model: Model,
    ctx: RenderContext,
    name: str,
    pods: dict[str, str],
    port: int,
    egress_ports: list[int],
) -> dict[str, Any]:
    sources: list[dict[str, Any]] = [{"podSelector": {}}]  # every pod of the Model's namespace
    for namespace in (ctx.monitoring_namespace, ctx.operator_namespace):
        if namespace and namespace != model.metadata.namespace:
            sources.append(_from_namespace(namespace))
    # DNS to any address: the cluster DNS pods carry no label every distribution agrees on
    # (k8s-app: kube-dns, a node-local cache on a link-local address), so the port selects.
    egress: list[dict[str, Any]] = [
        {"ports": [{"protocol": "UDP", "port": 53}, _tcp(53)]},
    ]
    if egress_ports:
        egress.append({"ports": [_tcp(p) for p in egress_ports]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(model, name),
        "spec": {
            "podSelector": {"matchLabels": pods},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": sources, "ports": [_tcp(port)]}],
            "egress": egress,
        },
    }
