"""The chart's monitoring toggles (docs/observability.md): off, nothing that needs the Prometheus
Operator's CRDs; on, a PodMonitor for the predictor pods (and one for the operator's metrics
port), a PrometheusRule wrapping files/prometheus-rules.yaml and the Grafana dashboard's
ConfigMap, each checked against the upstream CRD at its pinned version (rtml.dev.thirdparty).

The CRD check is structural (tests/crd_schema.py), not an API server's: the schemas of these
two CRDs carry no CEL rules, so it checks everything their schemas say.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from rtml.contract import HTTP_PORT
from rtml.dev.thirdparty import PODMONITOR_CRD, PROMETHEUSRULE_CRD
from rtml.dev.tools import ensure_tools
from rtml.operator.render import RenderContext
from rtml.operator.render.deployment import render_deployment
from tests.crd_schema import CHECKED, crd_keywords, crd_schema, validate
from tests.kube import REPO, thirdparty_crd
from tests.unit.helpers import model

pytestmark = pytest.mark.helm
CHART = REPO / "charts" / "rtml"
RULES = CHART / "files" / "prometheus-rules.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
ALL_ON = [
    "monitoring.podMonitor.enabled=true",
    "monitoring.operatorPodMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.dashboard.enabled=true",
]
MONITORING_KINDS = {"PodMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def helm() -> Path:
    return ensure_tools(progress=lambda _m: None) / "helm"


def template(
    helm: Path, *values: str, check: bool = True, namespace: str = "rtml"
) -> subprocess.CompletedProcess[str]:
    """`helm template` with each value `--set` (`json:` in front: `--set-json`, for a number
    `--set` would keep as a string)."""
    argv = [str(helm), "template", "t", str(CHART), "--namespace", namespace]
    for v in values:
        argv += ["--set-json", v.removeprefix("json:")] if v.startswith("json:") else ["--set", v]
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=120)


def rendered(helm: Path, *values: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(template(helm, *values).stdout) if d]


def by_name(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_off_by_default_so_a_cluster_without_the_crds_installs(helm: Path) -> None:
    docs = rendered(helm)
    assert not MONITORING_KINDS & {d["kind"] for d in docs}
    assert not [d for d in docs if "grafana_dashboard" in d["metadata"].get("labels", {})]


@pytest.mark.parametrize(
    ("kind", "crd_file"), [("PodMonitor", PODMONITOR_CRD), ("PrometheusRule", PROMETHEUSRULE_CRD)]
)
def test_every_monitoring_object_fits_the_upstream_crd(
    helm: Path, kind: str, crd_file: str
) -> None:
    schema = crd_schema(thirdparty_crd(crd_file), kind)
    assert crd_keywords(schema) <= CHECKED, "a keyword tests/crd_schema.py does not check"
    objects = [d for d in rendered(helm, *ALL_ON) if d["kind"] == kind]
    assert objects
    for obj in objects:
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert list(validate(obj, schema)) == [], obj["metadata"]["name"]


def test_the_crd_check_refuses_what_the_api_server_would() -> None:
    schema = crd_schema(thirdparty_crd(PODMONITOR_CRD), "PodMonitor")
    good = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": {"name": "x"},
            "spec": {"selector": {}, "podMetricsEndpoints": [{"port": "http"}]}}  # fmt: skip
    assert list(validate(good, schema)) == []
    bad = json.loads(json.dumps(good))
    bad["spec"]["podMetricsEndpoints"][0].update(interval="15 seconds", prot="http")
    del bad["spec"]["selector"]
    pattern = schema["properties"]["spec"]["properties"]["podMetricsEndpoints"]["items"][
        "properties"
    ]["interval"]["pattern"]
    assert set(validate(bad, schema)) == {
        "spec: selector is required",
        "spec.podMetricsEndpoints[0]: unknown field 'prot'",
        f"spec.podMetricsEndpoints[0].interval: '15 seconds' does not match {pattern}",
    }


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "Exists", e  # the only operator the chart uses
        if e["key"] not in labels:
            return False
    return True


def test_the_predictor_podmonitor_scrapes_the_pods_the_operator_renders(helm: Path) -> None:
    monitor = by_name(rendered(helm, *ALL_ON), "PodMonitor")["t-rtml-predictors"]
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    pod = render_deployment(model(), RenderContext(runtime_image="r:1"))["spec"]["template"]
    assert _selects(spec["selector"], pod["metadata"]["labels"])
    (endpoint,) = spec["podMetricsEndpoints"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[endpoint["port"]] == HTTP_PORT
    assert endpoint["path"] == pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    # The operator's own pods are not predictors.
    operator = by_name(rendered(helm), "Deployment")["t-operator"]["spec"]["template"]
    assert not _selects(spec["selector"], operator["metadata"]["labels"])


def test_the_predictor_podmonitor_watches_only_the_watched_namespaces(helm: Path) -> None:
    docs = rendered(helm, "monitoring.podMonitor.enabled=true", "watchNamespaces={ml,risk}")
    spec = by_name(docs, "PodMonitor")["t-rtml-predictors"]["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["ml", "risk"]}


def test_the_operator_podmonitor_scrapes_the_operators_metrics_port(helm: Path) -> None:
    off = template(helm, "monitoring.operatorPodMonitor.enabled=true", "operator.metricsPort=0",
                   check=False)  # fmt: skip
    assert off.returncode != 0
    assert "operator.metricsPort" in off.stderr
    monitor = by_name(rendered(helm, *ALL_ON), "PodMonitor")["t-operator"]
    pod = by_name(rendered(helm), "Deployment")["t-operator"]["spec"]["template"]
    assert _selects(monitor["spec"]["selector"], pod["metadata"]["labels"])
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert ports["metrics"] == defaults["operator"]["metricsPort"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["rtml"]}
    # Its series name the Experiment's namespace; the scrape must not overwrite it.
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "honorLabels": True}
    ]


def test_the_prometheusrule_wraps_the_rule_file_with_the_objective(helm: Path) -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    (rule,) = by_name(rendered(helm, *ALL_ON), "PrometheusRule").values()
    assert rule["spec"]["groups"] == groups  # the file's default objective is the chart's
    custom = rendered(helm, "monitoring.prometheusRule.enabled=true",
                      "json:monitoring.prometheusRule.availabilityObjective=0.9995",
                      "monitoring.prometheusRule.labels.release=kps")  # fmt: skip
    (rule,) = by_name(custom, "PrometheusRule").values()
    assert rule["metadata"]["labels"]["release"] == "kps"
    objectives, *others = rule["spec"]["groups"]
    assert objectives == {
        "name": "rtml.objectives",
        "rules": [{"record": "rtml:availability_objective", "expr": "vector(0.9995)"}],
    }
    assert others == groups[1:]


def test_the_dashboard_configmap_holds_the_dashboard_for_grafanas_sidecar(helm: Path) -> None:
    docs = rendered(
        helm,
        "monitoring.dashboard.enabled=true",
        "monitoring.dashboard.namespace=grafana",
        "monitoring.dashboard.annotations.grafana_folder=rtml",
    )
    (cm,) = by_name(docs, "ConfigMap").values()
    assert cm["metadata"]["name"] == "t-rtml-dashboard"
    assert cm["metadata"]["namespace"] == "grafana"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "rtml"}
    assert json.loads(cm["data"]["rtml.json"]) == json.loads(DASHBOARD.read_text())
    # A ConfigMap holds at most 1 MiB.
    assert len(cm["data"]["rtml.json"].encode()) < 1024 * 1024


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("json:monitoring.prometheusRule.availabilityObjective=1", "availabilityObjective"),
        ("monitoring.podMonitor.interval=15 seconds", "interval"),
        ("monitoring.serviceMonitor.enabled=true", "serviceMonitor"),
        ("operator.metricsPort=70000", "metricsPort"),
    ],
)
def test_the_values_schema_refuses_bad_monitoring_values(
    helm: Path, value: str, field: str
) -> None:
    out = template(helm, value, check=False)
    assert out.returncode != 0
    assert field in out.stderr
