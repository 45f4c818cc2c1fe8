"""The local cluster's autoscaling add-ons: how they are registered and started (pure)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from rtml.dev.addons import (
    adapter_rules_file,
    aggregated_api_manifests,
    metrics_server_argv,
    prometheus_adapter_argv,
)
from rtml.dev.nodeconfig import BRIDGE_IP

pytestmark = pytest.mark.unit
CHART_RULES = (
    Path(__file__).resolve().parents[2] / "charts/rtml/files/prometheus-adapter-rules.yaml"
)


def test_an_aggregated_api_points_at_the_process_on_the_bridge(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    service, endpoints, api = aggregated_api_manifests(
        "metrics-server", "metrics.k8s.io", "v1beta1", 40443, ca
    )
    assert "selector" not in service["spec"]  # its Endpoints are written, not selected
    assert service["spec"]["ports"][0]["targetPort"] == 40443
    (subset,) = endpoints["subsets"]
    assert subset["addresses"] == [{"ip": BRIDGE_IP}]
    assert subset["ports"][0]["port"] == 40443
    assert api["metadata"]["name"] == "v1beta1.metrics.k8s.io"
    assert api["spec"]["service"] == {"name": "metrics-server", "namespace": "kube-system",
                                      "port": 443}  # fmt: skip
    assert base64.b64decode(api["spec"]["caBundle"]) == ca.read_bytes()
    assert "insecureSkipTLSVerify" not in api["spec"]


def test_both_add_ons_serve_on_the_bridge_with_the_clusters_certificate() -> None:
    tls = (Path("/pki/x.crt"), Path("/pki/x.key"))
    kc = Path("/admin.kubeconfig")
    server = metrics_server_argv(Path("/bin/metrics-server"), 1, kc, Path("/ca.crt"), tls)
    adapter = prometheus_adapter_argv(Path("/bin/adapter"), 2, kc, tls, "http://p:9090",
                                      Path("/rules.yaml"))  # fmt: skip
    for argv, port in ((server, 1), (adapter, 2)):
        assert f"--secure-port={port}" in argv
        assert f"--bind-address={BRIDGE_IP}" in argv
        assert "--tls-cert-file=/pki/x.crt" in argv
        assert "--authentication-kubeconfig=/admin.kubeconfig" in argv
    # metrics-server refuses a resolution not above its kubelet request timeout (10 s).
    resolution = next(a for a in server if a.startswith("--metric-resolution="))
    assert int(resolution.split("=")[1].rstrip("s")) > 10
    assert "--kubelet-certificate-authority=/ca.crt" in server
    assert "--prometheus-url=http://p:9090" in adapter


def test_the_adapter_reads_the_charts_rules(tmp_path: Path) -> None:
    config = yaml.safe_load(adapter_rules_file(CHART_RULES, tmp_path).read_text())
    assert config == {"rules": yaml.safe_load(CHART_RULES.read_text())}
