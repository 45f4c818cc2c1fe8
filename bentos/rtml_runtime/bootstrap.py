"""Putting a Runtime together: its feature reader, its app, its start-up order."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from rtml.api.traffic import CHAMPION_ONLY
from rtml.contract import FEAST_ENTITY_KEY_VERSION, FEAST_PROJECT
from rtml.features.store import apply_views, make_store, materialize
from rtml_runtime.app import RuntimeApp
from rtml_runtime.config import RuntimeConfig
from rtml_runtime.engine import Runtime
from rtml_runtime.features import (
    FeastRedisReader,
    FeastSdkReader,
    FeastSqliteReader,
    FeatureReader,
)
from rtml_runtime.prometheus_compat import use_in_process_values
from rtml_runtime.stall import StallWatch
from rtml_runtime.trafficfile import TrafficFile

log = logging.getLogger("rtml.runtime")


def register_features(config: RuntimeConfig) -> None:
    """Apply the FeatureView to the registry and materialise it (what the operator does in a
    cluster; `rtml serve` does it on one machine before starting the server)."""
    view = config.feature_view
    if view is None:
        return
    store = make_store(config.store, project=FEAST_PROJECT)
    apply_views(store, [view], base_dir=config.base_dir)
    materialize(store, [view])


def make_reader(config: RuntimeConfig, register: bool = False) -> FeatureReader | None:
    """The feature reader for the configured store (None when the Model reads no view).

    Redis needs no FeatureStore at all (and so never imports the Feast SDK in the server);
    other online stores are read through the SDK.
    """
    view = config.feature_view
    if view is None:
        return None
    if register:
        register_features(config)
    if config.store.kind == "redis":
        return FeastRedisReader(
            view,
            config.store.redis_url_with_password,
            project=FEAST_PROJECT,
            key_version=FEAST_ENTITY_KEY_VERSION,
        )
    db = config.store.path / "online.db"
    if db.exists():
        return FeastSqliteReader(
            view, db, project=FEAST_PROJECT, key_version=FEAST_ENTITY_KEY_VERSION
        )
    return FeastSdkReader(make_store(config.store, project=FEAST_PROJECT), view)


def build_app(config: RuntimeConfig, register: bool = False) -> RuntimeApp:
    """An ASGI app whose start-up loads the model and connects the feature store, in parallel,
    and then follows the traffic plan file (`--traffic`, RTML_TRAFFIC) if there is one."""
    # Before the runtime's metrics exist: under BentoML (and after `import feast`, whose metrics
    # module sets it too) PROMETHEUS_MULTIPROC_DIR would put each of them in an mmap'd file.
    use_in_process_values()
    runtime = Runtime(config)
    runtime.metrics.slo_p99_latency.labels(config.name).set(
        config.model.spec.slo.p99_latency_ms / 1000
    )
    settings = config.settings
    traffic = TrafficFile(settings.traffic) if settings.traffic is not None else None
    follower: list[asyncio.Task[None]] = []
    stalls = StallWatch()

    async def startup() -> None:
        started = time.perf_counter()
        # Loading ONNX and importing Feast are independent: overlap them.
        reader_task = asyncio.create_task(asyncio.to_thread(make_reader, config, register))
        plan = await asyncio.to_thread(traffic.read) if traffic is not None else None
        await runtime.start(reader=None, plan=plan or CHAMPION_ONLY)
        try:
            runtime.reader = await reader_task
        except Exception as e:
            log.exception("feature store setup failed")
            runtime.refuse(f"the feature store is not usable: {e}")
            return
        # Everything imported and loaded so far (BentoML, ONNX Runtime, the model, Feast's
        # protobufs: a few hundred thousand objects) lives as long as the process. Frozen, the
        # garbage collector stops re-scanning it: the first seconds of traffic had 30 ms
        # gen-2 pauses (c=1 p99 29.6 ms over 5 s from a cold start, 0.70 ms frozen).
        gc.collect()
        gc.freeze()
        stalls.start()  # after start-up, whose imports in threads hold the loop by design
        if traffic is not None and runtime.ready:
            poll_s = settings.traffic_poll_seconds
            follower.append(asyncio.create_task(runtime.plans.follow(traffic, poll_s)))
        log.info(
            "started",
            extra={"seconds": round(time.perf_counter() - started, 3), "ready": runtime.ready},
        )

    async def shutdown() -> None:
        stalls.stop()
        for task in follower:
            task.cancel()
        await runtime.close()

    return RuntimeApp(runtime, on_startup=startup, on_shutdown=shutdown)
