"""What the renderers need to know besides the Model itself."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_RUNTIME_IMAGE = "ghcr.io/rtml-dev/rtml-runtime:0.1.0"
DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"


@dataclass(frozen=True)
class RenderContext:
    """Operator settings and cluster facts a renderer may branch on (never I/O)."""

    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    keda_installed: bool = False
    prometheus_url: str = DEFAULT_PROMETHEUS_URL
    cluster_domain: str = "cluster.local"
