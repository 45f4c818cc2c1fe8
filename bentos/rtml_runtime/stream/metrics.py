"""`rtml stream`'s metrics, in the runtime's registry (one /metrics for both; docs/metrics.md)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rtml_runtime.metrics import LATENCY_BUCKETS

# ok: scored and published; error: answered with an error result (a bad event, a 4xx/5xx of
# the runtime); duplicate: redelivered, windows left as they were, scored again; late: older
# than the longest window before the entity's latest event, scored, not kept in any window.
EVENT_OUTCOMES = ("ok", "error", "duplicate", "late")
LABELS = ("stream", "group")


class StreamMetrics:
    def __init__(self, registry: CollectorRegistry, stream: str, group: str) -> None:
        labels = (stream, group)
        events = Counter(
            "rtml_stream_events",
            "Events handled, by outcome (a duplicate or late event is also published).",
            (*LABELS, "outcome"),
            registry=registry,
        )
        self.events = {o: events.labels(*labels, o) for o in EVENT_OUTCOMES}
        self.failed = Counter(
            "rtml_stream_failures",
            "Events left unacknowledged after a failure (Redis or an unexpected error); "
            "they are redelivered by reclaim.",
            LABELS,
            registry=registry,
        ).labels(*labels)
        self.lag = Gauge(
            "rtml_stream_consumer_lag",
            "Entries in the input stream not yet delivered to the group (XINFO GROUPS lag); "
            "-1 when Redis cannot tell.",
            LABELS,
            registry=registry,
        ).labels(*labels)
        self.pending = Gauge(
            "rtml_stream_pending",
            "Entries delivered to the group and not yet acknowledged.",
            LABELS,
            registry=registry,
        ).labels(*labels)
        self.inflight = Gauge(
            "rtml_stream_inflight_events", "Events being processed.", LABELS, registry=registry
        ).labels(*labels)
        self.claimed = Counter(
            "rtml_stream_reclaimed",
            "Entries taken over from a consumer that left them pending (XAUTOCLAIM) or re-read "
            "after a restart.",
            LABELS,
            registry=registry,
        ).labels(*labels)
        self.duration = Histogram(
            "rtml_stream_processing_seconds",
            "From reading an event to acknowledging its published result.",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ).labels(*labels)
