"""The chart's RBAC scopes (docs/rbac.md) and tenancy values, from `helm template` (no server):
namespaced, no ClusterRole writes a workload and each watched namespace gets a Role; the
operator's env carries the tenancy settings the operator reads."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from rtml.dev.tools import ensure_tools

pytestmark = pytest.mark.helm
CHART = Path(__file__).resolve().parents[2] / "charts" / "rtml"
NAMESPACED = ["rbac.scope=namespaced", "watchNamespaces={team-a,team-b}"]
WRITES = {"create", "patch", "update", "delete", "deletecollection", "*"}
WORKLOADS = [("apps", "deployments"), ("batch", "cronjobs"), ("batch", "jobs")]


@pytest.fixture(scope="module")
def helm() -> Path:
    return ensure_tools(progress=lambda _m: None) / "helm"


def template(helm: Path, *values: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [str(helm), "template", "t", str(CHART), "--namespace", "rtml-system"]
    for v in values:
        argv += ["--set-json", v.removeprefix("json:")] if v.startswith("json:") else ["--set", v]
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=120)


def rendered(helm: Path, *values: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(template(helm, *values).stdout) if d]


def grants(rules: list[dict[str, Any]], group: str, resource: str) -> set[str]:
    """The verbs `rules` grant on a resource (wildcards count)."""
    return {
        verb
        for r in rules
        if {group, "*"} & set(r.get("apiGroups", []))
        and {resource, "*"} & set(r.get("resources", []))
        for verb in r.get("verbs", [])
    }


def _lease(doc: dict[str, Any]) -> bool:
    """The leader election's Role and RoleBinding (in the release's namespace, any scope)."""
    return str(doc["metadata"]["name"]).endswith("-leader-election")


def test_leader_election_may_write_only_leases_in_the_release_namespace(helm: Path) -> None:
    for values in ([], NAMESPACED):
        docs = [d for d in rendered(helm, *values) if _lease(d)]
        role, binding = sorted(docs, key=lambda d: str(d["kind"]))
        assert (role["kind"], binding["kind"]) == ("Role", "RoleBinding")
        assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "rtml-system"
        assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                  "verbs": ["get", "create", "update"]}]  # fmt: skip
        (deployment,) = [d for d in rendered(helm, *values) if d["kind"] == "Deployment"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert "--leader-elect" in container["args"]
        env = {e["name"]: e.get("valueFrom") for e in container["env"]}
        assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_replicas_need_leader_election(helm: Path) -> None:
    two = rendered(helm, "operator.replicas=2")
    (deployment,) = [d for d in two if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    off = ("operator.leaderElection.enabled=false",)
    (single,) = [d for d in rendered(helm, *off) if d["kind"] == "Deployment"]
    assert single["spec"]["strategy"]["type"] == "Recreate"
    assert "--leader-elect" not in single["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [d for d in rendered(helm, *off) if _lease(d)]
    refused = template(helm, "operator.replicas=2", *off, check=False)
    assert refused.returncode != 0
    assert "operator.replicas above 1 needs operator.leaderElection.enabled" in refused.stderr


def test_namespaced_has_no_cluster_role_writing_workloads(helm: Path) -> None:
    docs = rendered(helm, *NAMESPACED)
    cluster_roles = [d for d in docs if d["kind"] == "ClusterRole"]
    assert cluster_roles, "the CRD and namespace reads stay cluster-wide"
    for role in cluster_roles:
        for group, resource in [*WORKLOADS, ("", "configmaps"), ("rtml.dev", "models")]:
            assert not grants(role["rules"], group, resource) & WRITES, (group, resource)
    # What it keeps: read-only, and only kinds that are cluster-scoped.
    (role,) = cluster_roles
    assert {v for r in role["rules"] for v in r["verbs"]} <= {"get", "list", "watch"}
    assert {res for r in role["rules"] for res in r["resources"]} <= {
        "customresourcedefinitions",
        "namespaces",
    }


def test_namespaced_gives_each_watched_namespace_a_role_and_binding(helm: Path) -> None:
    docs = rendered(helm, *NAMESPACED)
    roles = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "Role" and not _lease(d)}
    bindings = {
        d["metadata"]["namespace"]: d for d in docs if d["kind"] == "RoleBinding" and not _lease(d)
    }
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for ns, role in roles.items():
        for group, resource in WORKLOADS[:2]:
            assert {"create", "patch", "delete"} <= grants(role["rules"], group, resource)
        assert "patch" in grants(role["rules"], "networking.k8s.io", "networkpolicies")
        (subject,) = bindings[ns]["subjects"]
        assert (subject["name"], subject["namespace"]) == ("t-operator", "rtml-system")
        assert bindings[ns]["roleRef"]["kind"] == "Role"
    # The operator watches those namespaces only (Kopf's namespaces, from --namespace).
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace=")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]


def test_cluster_scope_is_one_cluster_role_and_no_roles(helm: Path) -> None:
    docs = rendered(helm)
    kinds = [d["kind"] for d in docs if not _lease(d)]
    assert "Role" not in kinds
    assert "RoleBinding" not in kinds
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    assert {"create", "patch", "delete"} <= grants(role["rules"], "apps", "deployments")
    assert {"create", "patch", "delete"} <= grants(
        role["rules"], "networking.k8s.io", "networkpolicies"
    )


@pytest.mark.parametrize(
    ("values", "words"),
    [
        (["rbac.scope=namespaced"], "needs watchNamespaces"),
        (["rbac.scope=everywhere"], "rbac"),
    ],
)
def test_a_namespaced_install_without_namespaces_is_refused(
    helm: Path, values: list[str], words: str
) -> None:
    out = template(helm, *values, check=False)
    assert out.returncode != 0
    assert words in out.stderr


def operator_env(helm: Path, *values: str) -> dict[str, Any]:
    (deployment,) = [d for d in rendered(helm, *values) if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


@pytest.mark.parametrize(
    ("values", "images"),
    [
        ([], []),
        (['json:runtime.allowedImages=["registry.corp/ml/*"]'], ["registry.corp/ml/*"]),
    ],
)
def test_the_chart_allows_its_own_runtime_repository_and_what_is_added(
    helm: Path, values: list[str], images: list[str]
) -> None:
    env = operator_env(helm, *values)
    repo = "localhost/rtml-runtime"
    assert json.loads(env["RTML_ALLOWED_RUNTIME_IMAGES"]) == [
        repo,
        f"{repo}:*",
        f"{repo}@*",
        *images,
    ]
    assert env["RTML_ALLOW_SERVICE_ACCOUNT_NAME"] == "false"
    assert env["RTML_NETWORK_POLICY"] == "true"
    assert env["RTML_MONITORING_NAMESPACE"] == "monitoring"
    assert env["RTML_OPERATOR_NAMESPACE"] == "rtml-system"
    assert "RTML_PUSH_TOKEN_SECRET" not in env
    assert "RTML_AUDIT_SECRET" not in env


def test_the_push_token_secret_reaches_the_operator(helm: Path) -> None:
    env = operator_env(helm, "runtime.pushToken.existingSecret=push", "networkPolicy.enabled=false")
    assert (env["RTML_PUSH_TOKEN_SECRET"], env["RTML_PUSH_TOKEN_SECRET_KEY"]) == (
        "push",
        "push-token",
    )
    assert env["RTML_NETWORK_POLICY"] == "false"


def test_the_audit_secret_reaches_the_operator(helm: Path) -> None:
    env = operator_env(helm, "runtime.auditRedis.existingSecret=audit")
    assert (env["RTML_AUDIT_SECRET"], env["RTML_AUDIT_SECRET_KEY"]) == ("audit", "audit-redis-url")
