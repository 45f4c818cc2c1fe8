"""`rtml stream MODEL.yaml`: score a Redis Stream's events with the Model, at least once
(rtml_runtime.stream; docs/streaming.md). Stream settings are options here, not Model fields.
Only light modules are imported at module level: `rtml --help` must not load the runtime."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import click

from rtml.contract import ENV_FEAST_REDIS_URL
from rtml.logs import configure_logging
from rtml_runtime.cli import process_settings


@click.command()
@click.argument("config", type=click.Path(exists=True, path_type=Path))
@click.option("--model", "model_name", default=None, help="The Model when CONFIG holds several.")
@click.option(
    "--redis-url",
    default=None,
    help=f"The Redis online store, where window aggregates are kept [default: "
    f"${ENV_FEAST_REDIS_URL}, else redis://127.0.0.1:6379/0].",
)
@click.option(
    "--stream-url",
    default=None,
    help="The Redis holding the input and output streams [default: the online store's].",
)
@click.option(
    "--input", "input_stream", default=None, help="Input stream [default: rtml:MODEL:events]."
)
@click.option("--group", default=None, help="Consumer group [default: rtml-MODEL].")
@click.option(
    "--consumer",
    default=None,
    help="This consumer's name, unique in the group and the same across restarts, so a restart "
    "re-reads what it left pending [default: the host name].",
)
@click.option("--output", default=None, help="Output stream [default: rtml:MODEL:results].")
@click.option(
    "--output-maxlen",
    default=1_000_000,
    show_default=True,
    type=click.IntRange(min=0),
    help="Trim the output stream to about this many entries; 0: never trim.",
)
@click.option("--event-id-field", default="event_id", show_default=True, help="The event's id.")
@click.option(
    "--entity-field", default=None, help="The event's entity id [default: the Model's entity key]."
)
@click.option(
    "--time-field",
    default="event_time",
    show_default=True,
    help="The event's time: epoch seconds or ISO 8601 with a zone; windows follow it.",
)
@click.option(
    "--batch-size",
    default=32,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Entries per read (XREADGROUP COUNT); each read's window updates, results and "
    "acknowledgements go in one round trip each.",
)
@click.option("--block-ms", default=1000, show_default=True, type=click.IntRange(1, 60_000))
@click.option(
    "--max-in-flight",
    default=64,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Events read and not yet acknowledged; no read while this many are.",
)
@click.option(
    "--predict-concurrency",
    default=4,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Predictions awaiting their feature read at once (more only queue on the event loop).",
)
@click.option(
    "--claim-min-idle-ms",
    default=30_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Take over another consumer's pending entries once idle this long (XAUTOCLAIM).",
)
@click.option(
    "--claim-every",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Seconds between reclaim checks.",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.option(
    "--metrics-port",
    default=9400,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Prometheus /metrics of the stream and the runtime; 0: none.",
)
def stream(
    config: Path,
    model_name: str | None,
    redis_url: str | None,
    stream_url: str | None,
    input_stream: str | None,
    group: str | None,
    consumer: str | None,
    output: str | None,
    output_maxlen: int,
    event_id_field: str,
    entity_field: str | None,
    time_field: str,
    batch_size: int,
    block_ms: int,
    max_in_flight: int,
    predict_concurrency: int,
    claim_min_idle_ms: int,
    claim_every: float,
    metrics_host: str,
    metrics_port: int,
) -> None:
    """Consume a Redis Stream with a consumer group: keep the FeatureView's window aggregates
    in the online store, score each event with the Model and publish the result to an output
    stream, acknowledging only after it is published."""
    from rtml_runtime.config import ConfigError, load_config
    from rtml_runtime.stream.consumer import ConsumerOptions
    from rtml_runtime.stream.events import EventFields
    from rtml_runtime.stream.run import StreamSetupError, StreamTarget, run_stream

    configure_logging(logging.INFO)
    settings, feast = process_settings(config, model_name, "redis", None, redis_url)
    # Every event reads what its own window update just wrote: no L1 cache in front of it.
    settings = settings.model_copy(update={"cache_ttl_seconds": 0.0})
    try:
        resolved = load_config(settings, feast)
    except ConfigError as e:
        raise click.ClickException(str(e)) from e
    name = resolved.name
    target = StreamTarget(
        url=stream_url or feast.redis_url_with_password,
        input=input_stream or f"rtml:{name}:events",
        group=group or f"rtml-{name}",
        consumer=consumer or socket.gethostname(),
        output=output or f"rtml:{name}:results",
        output_max_length=output_maxlen,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
    )
    options = ConsumerOptions(
        fields=EventFields(
            event_id=event_id_field,
            entity=entity_field or resolved.entity_key or "entity_id",
            time=time_field,
        ),
        batch_size=batch_size,
        block_ms=block_ms,
        max_in_flight=max_in_flight,
        predict_concurrency=predict_concurrency,
        claim_min_idle_ms=claim_min_idle_ms,
        claim_every_s=claim_every,
    )
    try:
        handled = asyncio.run(run_stream(resolved, target, options))
    except StreamSetupError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"stopped after {handled} events", err=True)
