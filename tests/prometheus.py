"""The real Prometheus (Debian's /usr/bin/prometheus) as a process, for tests.

Loopback only, a free port, its TSDB under the test's folder, `--web.enable-lifecycle` so a test
can swap scrape configs with `reload()` instead of paying a restart.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from rtml.dev.cluster import LocalControlPlane

PROMETHEUS_BINARY = Path("/usr/bin/prometheus")
READY_TIMEOUT_S = 30.0


class PrometheusError(RuntimeError):
    """Prometheus did not start, or refused a configuration."""


def _debian_hint(log: str) -> str:
    if "kubernetes_sd_configs not found" not in log:
        return ""
    return (
        "\n(Debian's Prometheus is built without Kubernetes discovery: use "
        "http_pod_scrape_config with a PodDiscoveryBridge)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(url: str, method: str = "GET", timeout: float = 2.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method)  # noqa: S310 - our own loopback server
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


class PrometheusServer:
    def __init__(
        self,
        workdir: Path,
        scrape_configs: list[dict[str, Any]],
        port: int | None = None,
        scrape_interval: str = "1s",
        binary: Path = PROMETHEUS_BINARY,
        host: str = "127.0.0.1",
    ) -> None:
        self.workdir = workdir
        self.host = host  # the node's bridge address, for an operator running as a pod
        self.scrape_configs = scrape_configs
        self.port = port or _free_port()
        self.scrape_interval = scrape_interval
        self.binary = binary
        self.config_file = workdir / "prometheus.yml"
        self.log_file = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_seconds = 0.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def config(self, scrape_configs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "scrape_configs": scrape_configs,
        }

    def _write_config(self, scrape_configs: list[dict[str, Any]]) -> None:
        self.config_file.write_text(yaml.safe_dump(self.config(scrape_configs), sort_keys=False))

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_file.exists():
            return "(no log)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def start(self) -> PrometheusServer:
        if not self.binary.is_file():
            raise PrometheusError(
                f"{self.binary} is missing; install Debian's prometheus package "
                "(apt-get install prometheus)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config(self.scrape_configs)
        began = time.monotonic()
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(self.binary),
                    f"--config.file={self.config_file}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address={self.host}:{self.port}",
                    "--web.enable-lifecycle",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = began + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrometheusError(
                    f"Prometheus exited with {self.process.returncode} before it was ready:\n"
                    f"{self.log_tail()}{_debian_hint(self.log_tail())}"
                )
            with contextlib.suppress(OSError):
                if _http(f"{self.url}/-/ready", timeout=0.5)[0] == 200:
                    self.started_seconds = time.monotonic() - began
                    return self
            time.sleep(0.1)
        self.stop()
        raise PrometheusError(
            f"Prometheus was not ready at {self.url} within {READY_TIMEOUT_S:.0f}s:\n"
            f"{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM (it flushes the head block), then kill after 10 s. Idempotent."""
        p, self.process = self.process, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def reload(self, scrape_configs: list[dict[str, Any]]) -> None:
        """Rewrite the config and POST /-/reload; a config it refuses raises with its reason."""
        self.scrape_configs = scrape_configs
        self._write_config(scrape_configs)
        status, body = _http(f"{self.url}/-/reload", method="POST", timeout=10)
        if status != 200:
            raise PrometheusError(
                f"Prometheus refused the new config ({status}): {body!r}"
                + _debian_hint(body.decode(errors="replace"))
            )

    def api(self, path: str) -> Any:
        status, body = _http(f"{self.url}{path}")
        if status != 200:
            raise PrometheusError(f"GET {path} answered {status}: {body!r}")
        return json.loads(body)["data"]

    def active_targets(self) -> list[dict[str, Any]]:
        return list(self.api("/api/v1/targets?state=active")["activeTargets"])

    def wait_for_scrape(self, after: datetime, count: int, timeout: float = 20.0) -> None:
        """Until `count` targets are up and each was last scraped after `after` (UTC-aware)."""
        deadline = time.monotonic() + timeout
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            targets = self.active_targets()
            fresh = [
                t
                for t in targets
                if t["health"] == "up" and datetime.fromisoformat(t["lastScrape"]) > after
            ]
            if len(fresh) >= count:
                return
            time.sleep(0.1)
        summary = [(t["scrapeUrl"], t["health"], t["lastScrape"], t["lastError"]) for t in targets]
        raise PrometheusError(
            f"{count} targets were not all scraped after {after} within {timeout}s: {summary}"
        )


ANNOTATION_LABEL = "__meta_kubernetes_pod_annotation_"


def pod_relabel_configs() -> list[dict[str, Any]]:
    """Keep pods annotated `prometheus.io/scrape: "true"` and not finished; scrape their IP at
    the annotated port and path; label `namespace` and `pod` as the analysis queries expect."""
    annotation = f"{ANNOTATION_LABEL}prometheus_io_"
    return [
        {"source_labels": [f"{annotation}scrape"], "regex": "true", "action": "keep"},
        {
            "source_labels": ["__meta_kubernetes_pod_phase"],
            "regex": "Succeeded|Failed",
            "action": "drop",
        },
        {
            "source_labels": [f"{annotation}path"],
            "regex": "(.+)",
            "target_label": "__metrics_path__",
        },
        # IPv4, then IPv6 (which needs brackets around the address).
        {
            "source_labels": ["__meta_kubernetes_pod_ip", f"{annotation}port"],
            "regex": r"([^:]+);(\d+)",
            "replacement": "$1:$2",
            "target_label": "__address__",
        },
        {
            "source_labels": ["__meta_kubernetes_pod_ip", f"{annotation}port"],
            "regex": r"(.*:.*);(\d+)",
            "replacement": "[$1]:$2",
            "target_label": "__address__",
        },
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
    ]


def kubernetes_pod_scrape_config(
    job: str,
    api_server: str,
    ca_file: Path | str,
    cert_file: Path | str,
    key_file: Path | str,
    namespaces: list[str],
) -> dict[str, Any]:
    """Pods found through the API server (client certificate), relabelled by
    `pod_relabel_configs`. Upstream Prometheus only: Debian's build has no Kubernetes discovery
    (use `http_pod_scrape_config` with a `PodDiscoveryBridge` there)."""
    return {
        "job_name": job,
        "kubernetes_sd_configs": [
            {
                "role": "pod",
                "api_server": api_server,
                "tls_config": {
                    "ca_file": str(ca_file),
                    "cert_file": str(cert_file),
                    "key_file": str(key_file),
                },
                "namespaces": {"names": list(namespaces)},
            }
        ],
        "relabel_configs": pod_relabel_configs(),
    }


def http_pod_scrape_config(job: str, url: str, refresh_interval: str = "1s") -> dict[str, Any]:
    """Pods from an HTTP discovery endpoint (a `PodDiscoveryBridge`), relabelled exactly as
    `kubernetes_pod_scrape_config` relabels them."""
    return {
        "job_name": job,
        "http_sd_configs": [{"url": url, "refresh_interval": refresh_interval}],
        "relabel_configs": pod_relabel_configs(),
    }


def _label_name(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def pod_target_group(pod: dict[str, Any]) -> dict[str, Any]:
    """The target Prometheus' pod discovery would make of a pod (API JSON, camelCase): its IP
    (and first container port) with the `__meta_kubernetes_pod_*` labels relabelling reads."""
    meta, status = pod["metadata"], pod.get("status") or {}
    ip = status.get("podIP") or ""
    ports = [p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])]
    address = f"[{ip}]" if ":" in ip else ip
    labels = {
        "__meta_kubernetes_namespace": meta["namespace"],
        "__meta_kubernetes_pod_name": meta["name"],
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_phase": status.get("phase", ""),
    }
    for key, value in (meta.get("annotations") or {}).items():
        labels[f"{ANNOTATION_LABEL}{_label_name(key)}"] = value
    for key, value in (meta.get("labels") or {}).items():
        labels[f"__meta_kubernetes_pod_label_{_label_name(key)}"] = value
    return {"targets": [f"{address}:{ports[0]}" if ports else address], "labels": labels}


class PodDiscoveryBridge:
    """Prometheus' HTTP service discovery, answering with the pods `list_pods` returns (API
    JSON) as Kubernetes pod discovery would: Debian's Prometheus has no Kubernetes discovery
    (removed for its dependencies, see its NEWS.Debian), this puts the API server's pods in its
    reach with the same relabelling. Pods without an IP yet are left out."""

    def __init__(self, list_pods: Callable[[], list[dict[str, Any]]]) -> None:
        bridge = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                try:
                    groups = [pod_target_group(p) for p in list_pods()]
                    body = json.dumps([g for g in groups if g["targets"][0]]).encode()
                    self.send_response(200)
                except Exception as e:  # a failed listing is Prometheus' to report
                    bridge.errors.append(repr(e))
                    body = repr(e).encode()
                    self.send_response(500)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.errors: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/targets"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def api_pod_lister(api_client: Any, namespaces: list[str]) -> Callable[[], list[dict[str, Any]]]:
    """The pods of `namespaces`, listed with a `kubernetes.client.ApiClient`, as API JSON."""

    def list_pods() -> list[dict[str, Any]]:
        from kubernetes import client

        core = client.CoreV1Api(api_client)
        pods = [p for ns in namespaces for p in core.list_namespaced_pod(ns).items]
        return [api_client.sanitize_for_serialization(p) for p in pods]

    return list_pods


def control_plane_scrape_config(
    plane: LocalControlPlane, namespaces: list[str], job: str = "rtml-pods"
) -> dict[str, Any]:
    """`kubernetes_pod_scrape_config` for the local control plane, as its admin."""
    certs = plane.certs
    return kubernetes_pod_scrape_config(
        job, plane.server, certs.ca_cert, certs.admin_cert, certs.admin_key, namespaces
    )


def static_scrape_config(job: str, targets: dict[str, dict[str, str]]) -> dict[str, Any]:
    """One static target per address, each with its own labels (e.g. namespace, pod)."""
    return {
        "job_name": job,
        "static_configs": [{"targets": [a], "labels": labels} for a, labels in targets.items()],
    }


@pytest.fixture
def prometheus_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[list[dict[str, Any]]], PrometheusServer]]:
    """Start Prometheus servers (each in its own folder); all are stopped at teardown. Fails,
    never skips, without the binary."""
    started: list[PrometheusServer] = []

    def start(scrape_configs: list[dict[str, Any]]) -> PrometheusServer:
        server = PrometheusServer(tmp_path_factory.mktemp("prometheus"), scrape_configs)
        started.append(server)
        try:
            return server.start()
        except PrometheusError as e:
            pytest.fail(str(e))

    yield start
    for server in started:
        server.stop()


class RulesPrometheus(PrometheusServer):
    """PrometheusServer that also loads rule files (evaluated every scrape interval)."""

    def __init__(self, workdir: Path, scrape_configs: list[dict[str, Any]], rules: Path) -> None:
        super().__init__(workdir, scrape_configs)
        self.rules = rules

    def config(self, scrape_configs: list[dict[str, Any]]) -> dict[str, Any]:
        return {**super().config(scrape_configs), "rule_files": [str(self.rules)]}

    def get(self, path: str, **params: str) -> dict[str, Any]:
        """A GET of the HTTP API, which must answer status success."""
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        answer = json.loads(body)
        assert status == 200, (path, params, answer)
        assert answer["status"] == "success", (path, params, answer)
        return dict(answer)
