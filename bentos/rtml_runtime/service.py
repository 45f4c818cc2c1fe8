"""The rtml runtime as a BentoML service (`bentoml serve rtml_runtime.service:RtmlRuntime`).

BentoML hosts the process (its CLI, bentofile, `bentoml build`, its HTTP server and worker
management); the request path is our ASGI app mounted at `/`. The settings below switch off the
parts of BentoML that measured as most of its per-request cost on this path
(benchmarks/RESULTS.md), each for a reason:

- tracing sample_rate 0 and the request paths excluded: otherwise an OpenTelemetry span per
  request, kept alive with its context;
- metrics off: BentoML's own Prometheus middleware; the runtime exports its own (API.md names);
- access log off: one log line per request at thousands per second;
- monitoring off: the data-capture hook;
- traffic timeout = the Model's own deadline (+1 s), kept by rtml's `SweptTimeout` instead of
  BentoML's `TimeoutMiddleware`, which leaves a timer, a future and a context alive per
  request for the whole timeout (traffic.py says what that cost).
"""

from __future__ import annotations

from typing import Any

import bentoml
from bentoml._internal.server.http import traffic as bentoml_traffic

from rtml.contract import FeastProfile, RuntimeSettings, load_settings
from rtml_runtime.bootstrap import build_app
from rtml_runtime.config import load_config
from rtml_runtime.traffic import SweptTimeout

# BentoML builds its middleware stack after importing this module and looks the class up in
# this module attribute then (bentoml/_internal/server/base_app.py, `middlewares`).
bentoml_traffic.TimeoutMiddleware = SweptTimeout  # type: ignore[misc,assignment]

# BentoML imports this module to find the service: the settings are read once, here (`rtml
# serve` has already checked them, so an error names its variable before BentoML starts).
SETTINGS = load_settings(RuntimeSettings)
CONFIG = load_config(SETTINGS, load_settings(FeastProfile))
APP = build_app(CONFIG, register=SETTINGS.register_features)
TIMEOUT_S = CONFIG.model.spec.slo.timeout_ms / 1000 + 1
# Excluded paths skip BentoML's OpenTelemetry middleware outright (sample_rate 0 alone still
# builds a non-recording span and its context per request: ~20% of the request's CPU, py-spy).
TRACING_EXCLUDED = ["/predict", "/predict_batch", "/v2", "/metrics"]


@bentoml.asgi_app(APP, path="/")
@bentoml.service(
    name="rtml-runtime",
    workers=1,
    traffic={"timeout": TIMEOUT_S},
    metrics={"enabled": False},
    logging={"access": {"enabled": False}},
    tracing={"sample_rate": 0.0, "excluded_urls": TRACING_EXCLUDED},
    monitoring={"enabled": False},
)
class RtmlRuntime:
    """Hosts the runtime app; loading happens in the startup hook, off the import path."""

    @bentoml.on_startup
    async def load(self) -> None:
        assert APP.on_startup is not None
        await APP.on_startup()

    @bentoml.on_shutdown
    async def unload(self) -> None:
        assert APP.on_shutdown is not None
        await APP.on_shutdown()


class FastPath:
    """ASGI middleware: the runtime's own routes go straight to its app.

    Registered through BentoML's `add_asgi_middleware`, it sits inside BentoML's outer
    middlewares (error handling, the traffic timeout, tracing exclusion) but before its request
    context, router and mount, which cost ~20% of a prediction's CPU and serve no purpose for
    routes the runtime answers itself. Anything else (BentoML's /livez, /readyz, docs) passes on.
    """

    def __init__(self, app: Any, runtime_app: Any) -> None:
        self.app = app
        self.runtime_app = runtime_app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(FAST_PREFIXES):
            await self.runtime_app(scope, receive, send)
            return
        await self.app(scope, receive, send)


FAST_PREFIXES = ("/predict", "/v2/", "/metrics", "/push/")
# bentoml.service turns the class into a Service object; its type stubs say otherwise.
RtmlRuntime.add_asgi_middleware(FastPath, runtime_app=APP)  # type: ignore[attr-defined]
