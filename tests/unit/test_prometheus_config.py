"""The Prometheus test helper's configuration, without starting Prometheus."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.prometheus import (
    PrometheusServer,
    http_pod_scrape_config,
    kubernetes_pod_scrape_config,
    pod_relabel_configs,
    pod_target_group,
    static_scrape_config,
)

pytestmark = pytest.mark.unit


def test_kubernetes_pod_scrape_config_discovers_pods_of_the_namespaces_as_the_admin() -> None:
    config = kubernetes_pod_scrape_config(
        "rtml-pods", "https://127.0.0.1:6443", Path("/pki/ca.crt"), "/pki/admin.crt",
        "/pki/admin.key", ["ml", "shop"])  # fmt: skip
    assert config == {
        "job_name": "rtml-pods",
        "kubernetes_sd_configs": [
            {
                "role": "pod",
                "api_server": "https://127.0.0.1:6443",
                "tls_config": {
                    "ca_file": "/pki/ca.crt",
                    "cert_file": "/pki/admin.crt",
                    "key_file": "/pki/admin.key",
                },
                "namespaces": {"names": ["ml", "shop"]},
            }
        ],
        "relabel_configs": pod_relabel_configs(),
    }
    assert (
        http_pod_scrape_config("p", "http://x/targets")["relabel_configs"]
        == (config["relabel_configs"])
    )


def _relabel(labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus' relabelling (keep, drop, replace) as far as these rules use it."""
    out = dict(labels)
    for rule in pod_relabel_configs():
        value = ";".join(out.get(s, "") for s in rule["source_labels"])
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        action = rule.get("action", "replace")
        if action == "keep" and not match:
            return None
        if action == "drop" and match:
            return None
        if action == "replace" and match:
            template = re.sub(r"\$(\d)", r"\\\1", rule.get("replacement", "$1"))
            out[rule["target_label"]] = match.expand(template)
    return out


def _meta(ip: str = "10.0.0.7", scrape: str = "true", phase: str = "Running") -> dict[str, str]:
    return {
        "__address__": f"{ip}:3000" if ":" not in ip else f"[{ip}]:3000",
        "__meta_kubernetes_namespace": "ml",
        "__meta_kubernetes_pod_name": "fraud-7d9",
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_phase": phase,
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape": scrape,
        "__meta_kubernetes_pod_annotation_prometheus_io_port": "8080",
        "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
    }


def test_relabelling_scrapes_the_annotated_port_and_path_labelled_namespace_and_pod() -> None:
    out = _relabel(_meta())
    assert out is not None
    assert out["__address__"] == "10.0.0.7:8080"
    assert out["__metrics_path__"] == "/metrics"
    assert (out["namespace"], out["pod"]) == ("ml", "fraud-7d9")
    ipv6 = _relabel(_meta(ip="fd00::7"))
    assert ipv6 is not None
    assert ipv6["__address__"] == "[fd00::7]:8080"
    assert _relabel(_meta(scrape="false")) is None
    assert _relabel(_meta(phase="Succeeded")) is None


def test_pod_target_group_carries_what_kubernetes_discovery_would() -> None:
    pod = {
        "metadata": {"name": "fraud-7d9", "namespace": "ml",
                     "annotations": {"prometheus.io/scrape": "true"}, "labels": {"app": "x"}},
        "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 3000}]}]},
        "status": {"phase": "Running", "podIP": "10.0.0.7"},
    }  # fmt: skip
    group = pod_target_group(pod)
    assert group["targets"] == ["10.0.0.7:3000"]
    assert group["labels"]["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] == "true"
    assert group["labels"]["__meta_kubernetes_pod_label_app"] == "x"
    assert group["labels"]["__meta_kubernetes_pod_phase"] == "Running"


def test_server_config_scrapes_at_the_given_interval(tmp_path: Path) -> None:
    jobs = [static_scrape_config("rtml", {"127.0.0.1:9": {"namespace": "ml", "pod": "a"}})]
    server = PrometheusServer(tmp_path, jobs, port=9999, scrape_interval="2s")
    assert server.url == "http://127.0.0.1:9999"
    assert server.config(jobs) == {
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "scrape_configs": [
            {
                "job_name": "rtml",
                "static_configs": [
                    {"targets": ["127.0.0.1:9"], "labels": {"namespace": "ml", "pod": "a"}}
                ],
            }
        ],
    }
