"""The runtime's Prometheus metrics, named and labelled as API.md promises.

Its own registry (not the process-global one) so two runtimes in one test process never clash,
and children are resolved once per variant: `.labels()` is a dict lookup plus a lock, which is
measurable on a path that takes a fraction of a millisecond.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from rtml import __version__

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
SCORE_BUCKETS = tuple(i / 10 for i in range(11))
OUTCOMES = ("ok", "error", "fallback", "rejected", "rate_limited")
LABELS = ("model", "version", "variant")


@dataclass
class VariantMetrics:
    """Pre-resolved children for one (model, version, variant)."""

    duration: Histogram
    outcomes: dict[str, Counter]
    feature_duration: Histogram
    cache_hits: Counter
    cache_misses: Counter
    inflight: Gauge
    score: Histogram


class RuntimeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The process's CPU, memory and file descriptors, and the build, as the operator has.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Gauge(
            "rtml_build_info",
            "1, labelled with the rtml version and the Python it runs on.",
            ("version", "python"),
            registry=r,
        ).labels(__version__, platform.python_version()).set(1)
        self.request_duration = Histogram(
            "rtml_request_duration_seconds",
            "End-to-end request latency.",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "rtml_requests", "Requests by outcome.", (*LABELS, "outcome"), registry=r
        )
        self.feature_read = Histogram(
            "rtml_feature_read_duration_seconds",
            "Online feature read latency.",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "rtml_feature_cache_hits", "L1 feature cache hits.", LABELS, registry=r
        )
        self.cache_misses = Counter(
            "rtml_feature_cache_misses", "L1 feature cache misses.", LABELS, registry=r
        )
        self.breaker_state = Gauge(
            "rtml_circuit_breaker_state",
            "0 closed, 1 open, 2 half-open.",
            (*LABELS, "dependency"),
            registry=r,
        )
        self.inflight = Gauge(
            "rtml_inflight_requests", "Requests being served.", LABELS, registry=r
        )
        self.score = Histogram(
            "rtml_prediction_score",
            "Distribution of returned scores.",
            LABELS,
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.ready = Gauge(
            "rtml_ready", "1 once the model is loaded and warmed.", ("model",), registry=r
        )
        # The Model's latency objective, so alerts compare the p99 with it (charts/rtml/files/
        # prometheus-rules.yaml); set when the runtime is put together (bootstrap.build_app).
        self.slo_p99_latency = Gauge(
            "rtml_slo_p99_latency_seconds",
            "The Model's spec.slo.p99LatencyMs, in seconds.",
            ("model",),
            registry=r,
        )
        # Experiments (docs/traffic-split.md). One label set at a time: the plan in effect.
        self.candidate_weight = Gauge(
            "rtml_candidate_weight",
            "Percent of requests the candidate answers (shadow: also scores) in this pod, "
            "under the traffic plan revision in effect.",
            ("model", "experiment", "revision"),
            registry=r,
        )
        self.candidate_load_error = Gauge(
            "rtml_candidate_load_error",
            "1 while the traffic plan's candidate could not be loaded (the pod serves the "
            "champion only); reason ArtifactUnavailable or ModelInvalid.",
            ("model", "experiment", "revision", "version", "reason"),
            registry=r,
        )
        self.shadow_dropped = Counter(
            "rtml_shadow_dropped",
            "Shadow scorings dropped because the shadow queue was full.",
            LABELS,
            registry=r,
        )

        # Decisions (docs/decisions.md): only a Model with rules, an ensemble or thresholds.
        self.decisions = Counter(
            "rtml_decisions", "Assessments by decision.", ("model", "decision"), registry=r
        )
        self.rule_hits = Counter(
            "rtml_rule_hits", "spec.rules hits.", ("model", "rule", "severity"), registry=r
        )
        self.rule_errors = Counter(
            "rtml_rule_errors",
            "spec.rules evaluations that failed (a key the request lacks, a wrong type).",
            ("model", "rule"),
            registry=r,
        )
        self.model_calls = Counter(
            "rtml_model_calls",
            "Model scorings in assessments, by model (primary or an ensemble member's name) and "
            "outcome (ok, error, open, late).",
            ("model", "member", "outcome"),
            registry=r,
        )
        self.audit_records = Counter(
            "rtml_audit_records",
            "Audit records by outcome: written, dropped (queue full), failed (Redis refused).",
            ("model", "outcome"),
            registry=r,
        )
        self.audit_queue = Gauge(
            "rtml_audit_queue_depth", "Audit records waiting to be written.", ("model",), registry=r
        )

    def variant(self, model: str, version: str, variant: str) -> VariantMetrics:
        labels = (model, version, variant)
        return VariantMetrics(
            duration=self.request_duration.labels(*labels),
            outcomes={o: self.requests.labels(*labels, o) for o in OUTCOMES},
            feature_duration=self.feature_read.labels(*labels),
            cache_hits=self.cache_hits.labels(*labels),
            cache_misses=self.cache_misses.labels(*labels),
            inflight=self.inflight.labels(*labels),
            score=self.score.labels(*labels),
        )

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
