"""Putting a Runtime together: its feature reader, its app, its start-up order."""

from __future__ import annotations

import asyncio
import logging
import time

from rtml_runtime.app import RuntimeApp
from rtml_runtime.config import RuntimeConfig
from rtml_runtime.engine import Runtime
from rtml_runtime.features import FeastRedisReader, FeastSdkReader, FeatureReader

log = logging.getLogger("rtml.runtime")
FEAST_PROJECT = "rtml"


def make_reader(config: RuntimeConfig, register: bool = False) -> FeatureReader | None:
    """The feature reader for the configured store (None when the Model reads no view).

    With `register`, the view is first applied to the registry and materialised into the
    online store (what `rtml serve` does on one machine; in a cluster the operator does it).
    """
    view = config.feature_view
    if view is None:
        return None
    from rtml.features.store import StoreProfile, apply_views, make_store, materialize

    profile = StoreProfile(
        kind=config.store.kind, path=config.store.path, redis_url=config.store.redis_url
    )
    store = make_store(profile, project=FEAST_PROJECT, base_dir=config.base_dir)
    if register:
        apply_views(store, [view], base_dir=config.base_dir)
        materialize(store, [view])
    if config.store.kind == "redis":
        return FeastRedisReader(store, view, config.store.redis_url)
    return FeastSdkReader(store, view)


def build_app(config: RuntimeConfig, register: bool = False) -> RuntimeApp:
    """An ASGI app whose start-up loads the model and connects the feature store, in parallel."""
    runtime = Runtime(config)

    async def startup() -> None:
        started = time.perf_counter()
        # Loading ONNX and importing Feast are independent: overlap them.
        reader_task = asyncio.create_task(asyncio.to_thread(make_reader, config, register))
        await runtime.start(reader=None)
        try:
            runtime.reader = await reader_task
        except Exception as e:
            runtime.ready = False
            runtime.not_ready_reason = f"the feature store is not usable: {e}"
            log.exception("feature store setup failed")
            return
        log.info(
            "started",
            extra={"seconds": round(time.perf_counter() - started, 3), "ready": runtime.ready},
        )

    async def shutdown() -> None:
        await runtime.close()

    return RuntimeApp(runtime, on_startup=startup, on_shutdown=shutdown)
