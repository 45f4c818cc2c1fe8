"""Putting `rtml stream` together: Redis clients, the runtime (the same core as `rtml serve`:
features, breakers, deadline), the window store, the metrics endpoint, signals."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from rtml.contract import FEAST_ENTITY_KEY_VERSION, FEAST_PROJECT
from rtml_runtime.bootstrap import make_reader
from rtml_runtime.config import RuntimeConfig
from rtml_runtime.engine import Runtime
from rtml_runtime.feast_codec import codec
from rtml_runtime.stream.consumer import ConsumerOptions, StreamConsumer
from rtml_runtime.stream.metrics import StreamMetrics
from rtml_runtime.stream.source import RedisStreamSink, RedisStreamSource
from rtml_runtime.stream.windowstore import WindowStore

log = logging.getLogger("rtml.stream")


class StreamSetupError(Exception):
    """The stream cannot start; the message says why."""


@dataclass(frozen=True)
class StreamTarget:
    """Where events come from and go (the `rtml stream` options)."""

    url: str  # the Redis holding the input and output streams
    input: str
    group: str
    consumer: str
    output: str
    output_max_length: int
    metrics_host: str
    metrics_port: int  # 0: no metrics endpoint


async def run_stream(config: RuntimeConfig, target: StreamTarget, options: ConsumerOptions) -> int:
    """Consume until SIGTERM or SIGINT; returns the number of events handled."""
    import redis.asyncio as aredis
    from prometheus_client import start_http_server

    view = config.feature_view
    if view is not None and view.spec.aggregations and config.store.kind != "redis":
        raise StreamSetupError(
            f"FeatureView {view.metadata.name!r} declares spec.aggregations, which rtml stream "
            "keeps in the Redis online store: pass --profile redis (it is "
            f"{config.store.kind!r})"
        )
    runtime = Runtime(config)
    if target.metrics_port:
        start_http_server(
            target.metrics_port, target.metrics_host, registry=runtime.metrics.registry
        )
    metrics = StreamMetrics(runtime.metrics.registry, target.input, target.group)
    streams = aredis.from_url(target.url)
    store = None
    windows = None
    if view is not None and view.spec.aggregations:
        store = aredis.from_url(config.store.redis_url_with_password)
        windows = WindowStore(view, store, codec(), FEAST_PROJECT, FEAST_ENTITY_KEY_VERSION)
    reader = await asyncio.to_thread(make_reader, config)
    await runtime.start(reader=reader)
    if not runtime.ready:
        await runtime.close()
        raise StreamSetupError(f"the model is not ready: {runtime.not_ready_reason}")
    source = RedisStreamSource(streams, target.input, target.group, target.consumer)
    sink = RedisStreamSink(streams, target.output, target.output_max_length)
    consumer = StreamConsumer(runtime, source, sink, windows, metrics, options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "consuming",
        extra={
            "model": config.name,
            "input": target.input,
            "group": target.group,
            "consumer": target.consumer,
            "output": target.output,
            "aggregations": len(view.spec.aggregations) if view is not None else 0,
            "max_in_flight": options.max_in_flight,
        },
    )
    try:
        await consumer.run(stop)
    finally:
        await runtime.close()
        await streams.aclose()
        if store is not None:
            await store.aclose()
    return consumer.handled
