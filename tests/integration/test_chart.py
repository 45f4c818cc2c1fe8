"""The Helm chart: lint, template, install into the real control plane, least-privilege RBAC."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from rtml.dev.tools import ensure_tools
from tests.kube import REPO, Kube, install_crd_file

pytestmark = [pytest.mark.apiserver, pytest.mark.helm]
CHART = REPO / "charts" / "rtml"


@pytest.fixture(scope="module")
def bin_dir() -> Path:
    return ensure_tools(progress=lambda _m: None)


def run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=120)


def test_helm_lint_passes(bin_dir: Path) -> None:
    out = run([str(bin_dir / "helm"), "lint", "--strict", str(CHART)])
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout


def test_values_schema_refuses_bad_values(bin_dir: Path) -> None:
    out = run(
        [str(bin_dir / "helm"), "template", "t", str(CHART), "--set", "resyncSeconds=1"],
        check=False,
    )
    assert out.returncode != 0
    assert "resyncSeconds" in out.stderr


def test_values_schema_refuses_a_password_in_the_redis_url(bin_dir: Path) -> None:
    out = run(
        [str(bin_dir / "helm"), "template", "t", str(CHART),
         "--set", "feast.redisUrl=redis://:hunter2@redis:6379/0"],
        check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "feast.redisUrl" in out.stderr or "redisUrl" in out.stderr


def test_the_operator_gets_feast_credentials_from_the_existing_secret(
    bin_dir: Path, control_plane: Any
) -> None:
    """The chart's values for a real cluster: images, pull secrets, placement, the Secret."""
    values = [
        "feast.existingSecret=feast-credentials",
        "imagePullSecrets[0].name=regcred",
        "podAnnotations.team=ml",
        "serviceAccount.annotations.iam=role-x",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].key=pool",
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
    ]
    argv = [str(bin_dir / "helm"), "template", "t", str(CHART)]
    for v in values:
        argv += ["--set", v]
    docs = {d["kind"]: d for d in yaml.safe_load_all(run(argv).stdout) if d}
    pod = docs["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert container["image"] == "localhost/rtml-operator:0.1.0"
    assert env["RTML_RUNTIME_IMAGE"]["value"] == "localhost/rtml-runtime:0.1.0"
    assert env["RTML_FEAST_SECRET"]["value"] == "feast-credentials"
    for name, key in (("RTML_FEAST_REDIS_PASSWORD", "redis-password"),
                      ("RTML_FEAST_REGISTRY", "registry")):  # fmt: skip
        assert env[name]["valueFrom"] == {"secretKeyRef": {"name": "feast-credentials", "key": key}}
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["metadata"]["annotations"] == {"team": "ml"}
    assert "nodeAffinity" in pod["spec"]["affinity"]
    assert docs["ServiceAccount"]["metadata"]["annotations"] == {"iam": "role-x"}
    kubeconfig = ["--kubeconfig", str(control_plane.kubeconfig)]
    install = [str(bin_dir / "helm"), *kubeconfig, "install", "--dry-run=client", *argv[2:]]
    notes = run(install).stdout.split("NOTES:", 1)[1]
    assert 'Credentials come from Secret "feast-credentials"' in notes
    assert "helm uninstall leaves the CRDs" in notes
    assert "No rtml object carries a finalizer" in notes


def test_the_chart_package_carries_the_argocd_health_checks(bin_dir: Path, tmp_path: Path) -> None:
    """docs/gitops.md: users of a packaged chart find the scripts in rtml/argocd/."""
    run([str(bin_dir / "helm"), "package", str(CHART), "--destination", str(tmp_path)])
    (archive,) = tmp_path.glob("rtml-*.tgz")
    with tarfile.open(archive) as tar:
        packaged = {
            Path(m.name).name: (tar.extractfile(m) or io.BytesIO()).read().decode()
            for m in tar.getmembers()
            if m.name.startswith("rtml/argocd/")
        }
    shipped = {p.name: p.read_text() for p in (CHART / "argocd").glob("*.lua")}
    assert len(shipped) == 3
    assert packaged == shipped


def test_chart_crds_are_the_generated_crds(bin_dir: Path) -> None:
    for f in (REPO / "crds").glob("*.yaml"):
        assert (CHART / "crds" / f.name).read_text() == f.read_text()


def test_helm_install_and_least_privilege(
    bin_dir: Path,
    control_plane: Any,
    kube: Kube,
    rtml_crds: list[str],
    kserve_crd: str,
    keda_crd: str,
) -> None:
    kc = str(control_plane.kubeconfig)
    ns = f"rtml-{uuid.uuid4().hex[:6]}"
    release = f"r{uuid.uuid4().hex[:6]}"
    helm = [str(bin_dir / "helm"), "--kubeconfig", kc]
    run(
        [
            *helm,
            "install",
            release,
            str(CHART),
            "--namespace",
            ns,
            "--create-namespace",
            "--wait=false",
        ]
    )
    try:
        dep = kube.get("apps/v1", "Deployment", f"{release}-operator", ns)
        assert dep is not None
        pod = dep["spec"]["template"]["spec"]
        assert pod["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert pod["securityContext"]["runAsNonRoot"] is True
        sa = f"system:serviceaccount:{ns}:{release}-operator"

        def can(verb: str, resource: str, where: list[str]) -> bool:
            # `can-i get pods/log` would ask about a pod named "log": a subresource is a flag.
            resource, _, sub = resource.partition("/")
            subresource = [f"--subresource={sub}"] if sub else []
            out = run(
                [
                    str(bin_dir / "kubectl"),
                    "--kubeconfig",
                    kc,
                    "auth",
                    "can-i",
                    verb,
                    resource,
                    *subresource,
                    f"--as={sa}",
                    *where,
                ],
                check=False,
            )
            return out.stdout.strip() == "yes"

        anywhere = ["--all-namespaces"]
        needed = [
            ("watch", "models.rtml.dev"),
            ("patch", "models.rtml.dev/status"),
            ("patch", "deployments.apps"),
            ("delete", "horizontalpodautoscalers.autoscaling"),
            ("create", "poddisruptionbudgets.policy"),
            ("patch", "services"),
            ("patch", "configmaps"),
            ("patch", "inferenceservices.serving.kserve.io"),
            ("patch", "scaledobjects.keda.sh"),
            ("patch", "cronjobs.batch"),
            ("patch", "featureviews.rtml.dev/status"),
            ("create", "events"),
            ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
            ("list", "pods"),  # read-only: why a Model's replica is not ready
            ("watch", "pods"),
            ("patch", "pods"),  # the traffic-revision annotation (docs/experiments.md)
            ("create", "experiments.rtml.dev"),  # a Model's own canary
            ("patch", "experiments.rtml.dev/status"),
            ("patch", "networkpolicies.networking.k8s.io"),  # a bentoml Model's own
        ]
        for verb, resource in needed:
            assert can(verb, resource, anywhere), f"operator cannot {verb} {resource}"
        forbidden = [
            ("get", "secrets"),
            ("create", "pods"),
            ("delete", "pods"),
            ("get", "pods/log"),
            ("delete", "nodes"),
            ("create", "clusterroles.rbac.authorization.k8s.io"),
            ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
            ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
            ("delete", "models.rtml.dev"),
            ("create", "pods/exec"),
            ("delete", "namespaces"),
            ("*", "*"),
        ]
        for verb, resource in forbidden:
            assert not can(verb, resource, anywhere), f"operator can {verb} {resource}"
        # The leader election's Lease: in the release's namespace only (docs/outages.md).
        assert can("update", "leases.coordination.k8s.io", ["-n", ns])
        assert not can("update", "leases.coordination.k8s.io", anywhere)
        rendered = run([*helm, "get", "manifest", release, "-n", ns]).stdout
        kinds = sorted(d["kind"] for d in yaml.safe_load_all(rendered) if d)
        assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Role", "RoleBinding",
                         "ServiceAccount"]  # fmt: skip
    finally:
        run([*helm, "uninstall", release, "--namespace", ns], check=False)
        kube.delete("v1", "Namespace", ns)


CRDS_CHART = REPO / "charts" / "rtml-crds"
CRD_API = ("apiextensions.k8s.io/v1", "CustomResourceDefinition")


def _printer_columns(kube: Kube, name: str) -> list[str]:
    crd = kube.get(*CRD_API, name) or {}
    versions = (crd.get("spec") or {}).get("versions") or [{}]
    return [c["name"] for c in versions[0].get("additionalPrinterColumns") or []]


def test_the_crds_chart_really_upgrades_the_crds_and_uninstall_keeps_them(
    bin_dir: Path, control_plane: Any, kube: Kube, rtml_crds: list[str], tmp_path: Path
) -> None:
    """docs/cluster-quickstart.md's upgrade path: the CRDs a first install put there (the rtml
    chart's crds/, which Helm never upgrades) are taken over by the rtml-crds chart, whose next
    version changes one; `helm upgrade` applies the change, `helm uninstall` keeps them."""
    helm = [str(bin_dir / "helm"), "--kubeconfig", str(control_plane.kubeconfig)]
    release = f"crds-{uuid.uuid4().hex[:6]}"
    model_crd = "models.rtml.dev"
    try:
        run([*helm, "install", release, str(CRDS_CHART), "--take-ownership"])
        crd = kube.get(*CRD_API, model_crd)
        assert crd is not None
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        # The next version of the chart: a CRD with one more printer column.
        upgraded = tmp_path / "rtml-crds"
        shutil.copytree(CRDS_CHART, upgraded)
        chart = yaml.safe_load((upgraded / "Chart.yaml").read_text())
        chart["version"] = "0.1.1"
        (upgraded / "Chart.yaml").write_text(yaml.safe_dump(chart))
        template = upgraded / "templates" / f"{model_crd}.yaml"
        doc = yaml.safe_load(template.read_text())
        doc["spec"]["versions"][0]["additionalPrinterColumns"].append(
            {"name": "Upgraded", "type": "string", "jsonPath": ".spec.version"}
        )
        template.write_text(yaml.safe_dump(doc, sort_keys=False))
        assert "Upgraded" not in _printer_columns(kube, model_crd)
        run([*helm, "upgrade", release, str(upgraded)])
        assert "Upgraded" in _printer_columns(kube, model_crd)
        run([*helm, "uninstall", release])
        assert kube.get(*CRD_API, model_crd) is not None, "helm uninstall removed a kept CRD"
    finally:
        run([*helm, "uninstall", release], check=False)
        install_crd_file(kube, REPO / "crds" / f"{model_crd}.yaml")  # as the other tests expect
    assert "Upgraded" not in _printer_columns(kube, model_crd)


def test_the_crds_chart_holds_the_generated_crds_and_lints(bin_dir: Path) -> None:
    for f in (REPO / "crds").glob("*.yaml"):
        chart_copy = yaml.safe_load((CRDS_CHART / "templates" / f.name).read_text())
        assert chart_copy["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
        assert chart_copy == yaml.safe_load(f.read_text())
    out = run([str(bin_dir / "helm"), "lint", "--strict", str(CRDS_CHART)])
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout
