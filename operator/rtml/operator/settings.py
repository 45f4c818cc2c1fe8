"""Operator-wide settings, from the environment (the Helm chart sets them): `RTML_*`, and the
Feast profile `RTML_FEAST_*` (rtml.contract). A bad value stops the operator at start-up with
the variable named; credentials the operator would have to write into pods in clear stop it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rtml.contract import (
    DEFAULT_RUNTIME_IMAGE,
    TMP_DIR,
    FeastProfile,
    FeastSecretRef,
    credentials_problem,
    load_settings,
)
from rtml.operator.artifact_hosts import host_pattern_problem
from rtml.operator.render.context import DEFAULT_PROMETHEUS_URL, RenderContext


def _feast_from_environment() -> FeastProfile:
    return load_settings(FeastProfile)


def _host_pattern(pattern: str) -> str:
    problem = host_pattern_problem(pattern)
    if problem:
        raise ValueError(problem)
    return pattern


HostPattern = Annotated[str, AfterValidator(_host_pattern)]


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RTML_", frozen=True, populate_by_name=True)

    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    prometheus_url: str = DEFAULT_PROMETHEUS_URL
    resync_seconds: float = Field(default=60.0, gt=0)
    handler_retries: int = Field(default=20, ge=0)
    max_workers: int = Field(default=4, gt=0)
    watch_server_timeout: int = Field(default=300, gt=0)
    watch_inactivity_timeout: float = Field(default=70.0, gt=0)
    heartbeat_stale_seconds: float = Field(default=90.0, gt=0)
    kserve_poll_seconds: float = Field(default=5.0, gt=0)
    # How often a running Experiment is looked at (it sleeps less when waiting on pods).
    experiment_tick_seconds: float = Field(default=5.0, gt=0)
    # Where the operator serves its own /metrics (chart: the `metrics` port); 0: not served.
    metrics_port: int = Field(default=8081, ge=0, le=65535)
    # The autoscalers' scale-down stabilization window (chart value
    # `autoscaling.scaleDownStabilizationSeconds`).
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, le=3600)
    # Prometheus' answer deadline for one analysis query (then onMetricsUnavailable applies).
    prometheus_timeout_seconds: float = Field(default=5.0, gt=0)
    # The operator-wide Feast profile (Helm values `feast.*`), read with its own prefix.
    feast: FeastProfile = Field(default_factory=_feast_from_environment, exclude=True)
    # The Secret (chart value `feast.existingSecret`) pods read the Feast credentials from; it
    # must exist in every namespace whose Models or FeatureViews read features.
    feast_secret: str | None = None
    feast_secret_redis_password_key: str = "redis-password"  # noqa: S105 - a key's name
    feast_secret_registry_key: str = "registry"  # noqa: S105 - a key's name
    # Chart values `materialization.volumes` / `.volumeMounts` (JSON lists of Kubernetes
    # Volume / VolumeMount objects): where the materialization Job reads `file://` sources.
    materialize_volumes: list[dict[str, Any]] = Field(default_factory=list)
    materialize_volume_mounts: list[dict[str, Any]] = Field(default_factory=list)
    # Outages and shutdown (docs/outages.md). The longest a periodic visit waits after failures
    # in a row (exponential backoff with full jitter from the loop's interval; chart value
    # `operator.outageBackoffCapSeconds`); also how late the resync may notice the API is back.
    outage_backoff_cap_seconds: float = Field(default=120.0, gt=0, le=3600)
    # After SIGTERM, the operator has exited within this (chart: terminationGracePeriodSeconds
    # is this plus 2 s, `operator.shutdownTimeoutSeconds`).
    shutdown_timeout_seconds: float = Field(default=8.0, gt=0, le=300)
    # Tenancy (docs/tenancy.md). fnmatch patterns (JSON list) a Model's spec.runtime.image must
    # match; the chart allows its own runtime repository plus `runtime.allowedImages`.
    allowed_runtime_images: list[str] = Field(default_factory=lambda: ["*"])
    # Whether a Model may set spec.runtime.serviceAccountName (its pods get that account's rights).
    allow_service_account_name: bool = False
    # A NetworkPolicy per bentoml Model (docs/network-policy.md), admitting these namespaces.
    network_policy: bool = True
    monitoring_namespace: str = "monitoring"
    operator_namespace: str | None = None  # the chart sets the release's namespace
    # The Secret and key holding the runtime's push token (RTML_PUSH_TOKEN) in each namespace
    # with push views; unset: POST /push/{view} is off (403).
    push_token_secret: str | None = None
    push_token_secret_key: str = "push-token"  # noqa: S105 - a key's name
    # The Secret and key holding the Redis URL (password included) that spec.audit writes to,
    # in each namespace with audited Models; unset: the online store's Redis.
    audit_secret: str | None = None
    audit_secret_key: str = "audit-redis-url"  # noqa: S105 - a key's name
    # The signature check's downloads (docs/signature-check.md). fnmatch patterns (JSON list) of
    # the hosts the operator may fetch http(s):// artifacts from; empty: it fetches none, and
    # the runtime checks those Models at start-up. A loopback, link-local or metadata address
    # needs a pattern naming the host exactly.
    artifact_fetch_hosts: list[HostPattern] = Field(default_factory=list)
    # One download's overall deadline: the whole transfer, however slowly bytes arrive.
    artifact_fetch_deadline_seconds: float = Field(default=30.0, gt=0, le=600)
    # Artifacts over this size are neither downloaded nor parsed by the operator.
    artifact_fetch_max_bytes: int = Field(default=64 << 20, gt=0)
    # How long a failed download is remembered before a reconcile tries it again.
    artifact_fetch_retry_seconds: float = Field(default=300.0, gt=0)
    # Downloads at once (a pool of their own, never the handlers' threads).
    artifact_fetch_workers: int = Field(default=2, ge=1, le=16)
    # The download folder (default $TMPDIR/rtml-signatures) and what it may keep: the least
    # recently used artifacts go first (the chart's /tmp emptyDir holds 256 MiB).
    signature_cache_dir: Path | None = None
    signature_cache_max_files: int = Field(default=16, ge=1)
    signature_cache_max_bytes: int = Field(default=64 << 20, ge=0)

    @model_validator(mode="after")
    def _materialize_mounts_name_volumes(self) -> OperatorSettings:
        problem = materialize_volumes_problem(
            self.materialize_volumes, self.materialize_volume_mounts, str(self.feast.path)
        )
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _credentials_reach_pods_only_as_secrets(self) -> OperatorSettings:
        problem = credentials_problem(self.feast, self.feast_secret_ref())
        if problem:
            raise ValueError(problem)
        return self

    @classmethod
    def load(cls, **values: Any) -> OperatorSettings:
        """From the environment (`values` win); raises SettingsError naming the variable."""
        return load_settings(cls, **values)

    def feast_secret_ref(self) -> FeastSecretRef | None:
        if not self.feast_secret:
            return None
        return FeastSecretRef(
            name=self.feast_secret,
            redis_password_key=self.feast_secret_redis_password_key,
            registry_key=self.feast_secret_registry_key,
        )

    def render_context(self) -> RenderContext:
        return RenderContext(
            runtime_image=self.runtime_image,
            prometheus_url=self.prometheus_url,
            scale_down_stabilization_seconds=self.scale_down_stabilization_seconds,
            feast=self.feast,
            feast_secret=self.feast_secret_ref(),
            materialize_volumes=tuple(self.materialize_volumes),
            materialize_volume_mounts=tuple(self.materialize_volume_mounts),
            allowed_runtime_images=tuple(self.allowed_runtime_images),
            allow_service_account_name=self.allow_service_account_name,
            network_policy=self.network_policy,
            monitoring_namespace=self.monitoring_namespace,
            operator_namespace=self.operator_namespace,
            push_token_secret=self.push_token_secret,
            push_token_secret_key=self.push_token_secret_key,
            audit_secret=self.audit_secret,
            audit_secret_key=self.audit_secret_key,
        )


def materialize_volumes_problem(
    volumes: list[dict[str, Any]], mounts: list[dict[str, Any]], feast_path: str
) -> str | None:
    """What is wrong with the materialization pod's extra volumes, naming the variable."""
    names: list[str] = []
    for i, volume in enumerate(volumes):
        name = volume.get("name")
        if not isinstance(name, str) or not name:
            return f"RTML_MATERIALIZE_VOLUMES[{i}]: a volume needs a name"
        if name in ("tmp", "feast") or name in names:
            return f"RTML_MATERIALIZE_VOLUMES[{i}]: the name {name!r} is already taken"
        names.append(name)
    for i, mount in enumerate(mounts):
        where = f"RTML_MATERIALIZE_VOLUME_MOUNTS[{i}]"
        path = mount.get("mountPath")
        if mount.get("name") not in names:
            return f"{where}: mounts {mount.get('name')!r}, which RTML_MATERIALIZE_VOLUMES lacks"
        if not isinstance(path, str) or not path.startswith("/"):
            return f"{where}: mountPath must be an absolute path"
        if path.rstrip("/") in (TMP_DIR, feast_path.rstrip("/")):
            return f"{where}: {path} is the Job's own /tmp or Feast folder"
    return None
