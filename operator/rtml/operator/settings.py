"""Operator-wide settings, from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rtml.features.store import StoreProfile
from rtml.operator.render.context import (
    DEFAULT_PROMETHEUS_URL,
    DEFAULT_RUNTIME_IMAGE,
    RenderContext,
)


@dataclass(frozen=True)
class OperatorSettings:
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    prometheus_url: str = DEFAULT_PROMETHEUS_URL
    resync_seconds: float = 60.0
    handler_timeout_seconds: float = 120.0
    handler_retries: int = 20
    max_workers: int = 4
    watch_server_timeout: int = 300
    watch_inactivity_timeout: float = 70.0
    heartbeat_stale_seconds: float = 90.0
    kserve_poll_seconds: float = 5.0
    # The operator-wide Feast profile (Helm values): the online store, its folder (SQLite files,
    # Feast's repo_path), Redis, and the SQL registry (PostgreSQL in a cluster; default SQLite).
    feast_store: Literal["sqlite", "redis"] = "sqlite"
    feast_path: str = "/var/lib/rtml/feast"
    feast_redis_url: str = "redis://127.0.0.1:6379/0"
    feast_registry: str | None = None
    # Attempts at removing a deleted FeatureView from the registry before the finalizer is
    # released anyway (with a Warning Event): a deletion must not hang on an outage.
    feast_delete_attempts: int = 3

    @classmethod
    def from_env(cls) -> OperatorSettings:
        env = os.environ
        d = cls()
        return cls(
            runtime_image=env.get("RTML_RUNTIME_IMAGE", d.runtime_image),
            prometheus_url=env.get("RTML_PROMETHEUS_URL", d.prometheus_url),
            resync_seconds=float(env.get("RTML_RESYNC_SECONDS", d.resync_seconds)),
            handler_timeout_seconds=float(
                env.get("RTML_HANDLER_TIMEOUT", d.handler_timeout_seconds)
            ),
            handler_retries=int(env.get("RTML_HANDLER_RETRIES", d.handler_retries)),
            max_workers=int(env.get("RTML_MAX_WORKERS", d.max_workers)),
            kserve_poll_seconds=float(env.get("RTML_KSERVE_POLL_SECONDS", d.kserve_poll_seconds)),
            feast_store="redis" if env.get("RTML_FEAST_STORE") == "redis" else "sqlite",
            feast_path=env.get("RTML_FEAST_PATH", d.feast_path),
            feast_redis_url=env.get("RTML_FEAST_REDIS_URL", d.feast_redis_url),
            feast_registry=env.get("RTML_FEAST_REGISTRY") or None,
            feast_delete_attempts=int(
                env.get("RTML_FEAST_DELETE_ATTEMPTS", d.feast_delete_attempts)
            ),
        )

    def store_profile(self) -> StoreProfile:
        return StoreProfile(
            kind=self.feast_store,
            path=Path(self.feast_path),
            redis_url=self.feast_redis_url,
            registry=self.feast_registry,
        )

    def store_env(self) -> dict[str, str]:
        """The profile as the environment `rtml materialize` reads (the CronJob's env)."""
        env = {
            "RTML_FEAST_STORE": self.feast_store,
            "RTML_FEAST_PATH": self.feast_path,
            "RTML_FEAST_REDIS_URL": self.feast_redis_url,
        }
        if self.feast_registry:
            env["RTML_FEAST_REGISTRY"] = self.feast_registry
        return env

    def render_context(self) -> RenderContext:
        return RenderContext(runtime_image=self.runtime_image, prometheus_url=self.prometheus_url)
