"""Operator-wide settings, from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass

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
        )

    def render_context(self) -> RenderContext:
        return RenderContext(runtime_image=self.runtime_image, prometheus_url=self.prometheus_url)
