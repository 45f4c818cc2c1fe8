"""What the renderers need to know besides the Model itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rtml.contract import DEFAULT_RUNTIME_IMAGE, FeastProfile, FeastSecretRef

DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"


@dataclass(frozen=True)
class RenderContext:
    """Operator settings and cluster facts a renderer may branch on (never I/O).

    `feast` is the operator-wide Feast profile pods are given; `feast_secret` the Secret their
    credentials come from (None: the profile has none).
    """

    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    keda_installed: bool = False
    prometheus_url: str = DEFAULT_PROMETHEUS_URL
    cluster_domain: str = "cluster.local"
    # How long an autoscaler waits before acting on a lower recommendation (HPA behavior).
    scale_down_stabilization_seconds: int = 300
    # The defaults when not given: a renderer never reads the environment.
    feast: FeastProfile = field(default_factory=FeastProfile.model_construct)
    feast_secret: FeastSecretRef | None = None
    # Extra volumes (and their mounts) of the materialization Job's pod: where `file://`
    # sources live in a cluster (a PersistentVolumeClaim present in each namespace, NFS, ...).
    materialize_volumes: tuple[dict[str, Any], ...] = ()
    materialize_volume_mounts: tuple[dict[str, Any], ...] = ()
    # Tenancy (docs/tenancy.md): fnmatch patterns a Model's spec.runtime.image must match, and
    # whether a Model may name its pods' service account (and so borrow that account's rights).
    allowed_runtime_images: tuple[str, ...] = ("*",)
    allow_service_account_name: bool = False
    # A NetworkPolicy per bentoml Model (docs/network-policy.md) and the namespaces it admits.
    network_policy: bool = True
    monitoring_namespace: str = "monitoring"
    operator_namespace: str | None = None
    # The Secret (and its key) a push view's predictor pods read RTML_PUSH_TOKEN from.
    push_token_secret: str | None = None
    push_token_secret_key: str = "push-token"  # noqa: S105 - a key's name
    # The Secret (and its key) holding the Redis URL spec.audit writes to (RTML_AUDIT_REDIS_URL).
    audit_secret: str | None = None
    audit_secret_key: str = "audit-redis-url"  # noqa: S105 - a key's name
