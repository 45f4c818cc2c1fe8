"""The autoscaling add-ons of the local cluster: metrics-server (the resource metrics API,
`metrics.k8s.io`, which an HPA on `cpu` reads) and prometheus-adapter (the custom metrics API,
`custom.metrics.k8s.io`, which an HPA on `concurrency`, `rps` or `p99Latency` reads).

Both run as processes on the node's host, like the control plane, listening on the bridge
address, and are reached by the API server's aggregation layer through an `APIService`, a
selector-less Service and its Endpoints (the API server routes to the endpoint itself:
`--enable-aggregator-routing`). Each has a serving certificate from the cluster's CA, which the
`APIService` trusts. They authenticate to the API server as the admin: a dev cluster's add-on,
not a hardened install (docs/autoscaling.md).

metrics-server is part of the cluster (`rtml dev cluster up` starts it with the node);
prometheus-adapter needs a Prometheus, so whoever runs one starts the adapter
(`start_prometheus_adapter`), with the adapter rules the chart ships.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from rtml.dev import certs
from rtml.dev.nodeconfig import BRIDGE_IP
from rtml.dev.process import Managed, free_port

Launch = Callable[[str, list[str]], Managed]
METRICS_SERVER_RESOLUTION = (
    "15s"  # above its kubelet request timeout (10 s); the HPA syncs every 15 s
)
ADAPTER_RELIST = "10s"  # how often prometheus-adapter looks for new series (default 10m)


def aggregated_api_manifests(
    name: str, group: str, version: str, port: int, ca_cert: Path, namespace: str = "kube-system"
) -> list[dict[str, Any]]:
    """The Service, Endpoints and APIService that put a process on BRIDGE_IP:`port` behind
    `/apis/GROUP/VERSION` of the API server."""
    ca_bundle = base64.b64encode(ca_cert.read_bytes()).decode()
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": name, "namespace": namespace},
            "subsets": [
                {"addresses": [{"ip": BRIDGE_IP}], "ports": [{"name": "https", "port": port}]}
            ],
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": f"{version}.{group}"},
            "spec": {
                "group": group,
                "version": version,
                "service": {"name": name, "namespace": namespace, "port": 443},
                "caBundle": ca_bundle,
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


def _serving(files: certs.CertFiles, name: str, workdir: Path) -> tuple[Path, Path]:
    dns = (name, f"{name}.kube-system", f"{name}.kube-system.svc")
    return certs.issue_serving_cert(files, name, dns, (BRIDGE_IP,), workdir / name)


def _apiserver_flags(port: int, kubeconfig: Path, tls: tuple[Path, Path]) -> list[str]:
    """What both add-ons take as aggregated API servers: where to listen, the serving
    certificate, and whom to ask about callers (the admin kubeconfig)."""
    return [
        f"--secure-port={port}",
        f"--bind-address={BRIDGE_IP}",
        f"--tls-cert-file={tls[0]}",
        f"--tls-private-key-file={tls[1]}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
    ]


def metrics_server_argv(
    binary: Path, port: int, kubeconfig: Path, ca_cert: Path, tls: tuple[Path, Path]
) -> list[str]:
    return [
        str(binary),
        *_apiserver_flags(port, kubeconfig, tls),
        f"--kubeconfig={kubeconfig}",
        # The kubelet's serving certificate is the cluster CA's, for its InternalIP.
        "--kubelet-preferred-address-types=InternalIP",
        f"--kubelet-certificate-authority={ca_cert}",
        f"--metric-resolution={METRICS_SERVER_RESOLUTION}",
    ]


def start_metrics_server(
    launch: Launch,
    apply: Callable[[list[dict[str, Any]]], None],
    binary: Path,
    files: certs.CertFiles,
    kubeconfig: Path,
    workdir: Path,
) -> Managed:
    port = free_port()
    tls = _serving(files, "metrics-server", workdir)
    process = launch("metrics-server", metrics_server_argv(binary, port, kubeconfig,
                                                           files.ca_cert, tls))  # fmt: skip
    apply(aggregated_api_manifests("metrics-server", "metrics.k8s.io", "v1beta1", port,
                                   files.ca_cert))  # fmt: skip
    return process


def prometheus_adapter_argv(
    binary: Path,
    port: int,
    kubeconfig: Path,
    tls: tuple[Path, Path],
    prometheus_url: str,
    rules: Path,
) -> list[str]:
    return [
        str(binary),
        *_apiserver_flags(port, kubeconfig, tls),
        f"--lister-kubeconfig={kubeconfig}",
        f"--prometheus-url={prometheus_url}",
        f"--config={rules}",
        f"--metrics-relist-interval={ADAPTER_RELIST}",
        "--v=1",
    ]


def adapter_rules_file(chart_rules: Path, workdir: Path) -> Path:
    """The adapter's config file from the chart's rules (charts/rtml/files/): the same rules the
    chart ships for the prometheus-adapter chart's `rules.custom`."""
    rules = yaml.safe_load(chart_rules.read_text())
    path = workdir / "prometheus-adapter.yaml"
    path.write_text(yaml.safe_dump({"rules": rules}))
    return path


def start_prometheus_adapter(
    launch: Launch,
    apply: Callable[[list[dict[str, Any]]], None],
    binary: Path,
    files: certs.CertFiles,
    kubeconfig: Path,
    workdir: Path,
    prometheus_url: str,
    chart_rules: Path,
) -> Managed:
    port = free_port()
    tls = _serving(files, "prometheus-adapter", workdir)
    rules = adapter_rules_file(chart_rules, workdir)
    argv = prometheus_adapter_argv(binary, port, kubeconfig, tls, prometheus_url, rules)
    process = launch("prometheus-adapter", argv)
    apply(aggregated_api_manifests("prometheus-adapter", "custom.metrics.k8s.io", "v1beta1",
                                   port, files.ca_cert))  # fmt: skip
    return process
