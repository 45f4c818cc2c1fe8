"""The analysis queries against the real Prometheus, scraping what the runtime's own metrics
code exports (rtml_runtime.metrics.RuntimeMetrics) with known latencies, outcomes and scores.

Fake pods are loopback HTTP servers, each serving one RuntimeMetrics registry (the weight gauge
included); the static scrape config sets the `namespace` and `pod` labels that the Kubernetes
pod discovery sets in a cluster.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import MetricsHandler

from rtml.operator.analysis import MetricsUnavailable, PrometheusSource, Window
from rtml_runtime.metrics import RuntimeMetrics, VariantMetrics
from tests.prometheus import (
    PodDiscoveryBridge,
    PrometheusError,
    PrometheusServer,
    http_pod_scrape_config,
    kubernetes_pod_scrape_config,
    prometheus_factory,  # noqa: F401 - a fixture
    static_scrape_config,
)

pytestmark = pytest.mark.prometheus
NS, MODEL = "ml", "fraud"


class Exporter:
    """One scrape target on a free loopback port, serving `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), MetricsHandler.factory(registry))
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _observe(v: VariantMetrics, latencies: dict[float, int], outcomes: dict[str, int],
             scores: dict[float, int]) -> None:  # fmt: skip
    for seconds, n in latencies.items():
        for _ in range(n):
            v.duration.observe(seconds)
    for outcome, n in outcomes.items():
        v.outcomes[outcome].inc(n)
    for score, n in scores.items():
        for _ in range(n):
            v.score.observe(score)


@dataclass
class Scraped:
    prometheus: PrometheusServer
    source: PrometheusSource
    window: Window
    pods: dict[str, RuntimeMetrics]


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    """Prometheus has scraped every series at zero, then once more after the known traffic."""
    pods = {"pod-a": RuntimeMetrics(), "pod-b": RuntimeMetrics(), "pod-x": RuntimeMetrics()}
    namespaces = {"pod-a": NS, "pod-b": NS, "pod-x": "elsewhere"}
    variants = {
        (name, model, variant): pod.variant(model, version, variant)
        for name, pod in pods.items()
        for model in (MODEL, "spam", "idle")
        for version, variant in (("v1", "champion"), ("v2", "candidate"), ("v2", "shadow"))
    }
    pods["pod-a"].candidate_weight.labels(MODEL, "fraud-v2", "rev-new").set(25)
    pods["pod-b"].candidate_weight.labels(MODEL, "fraud-v2", "rev-old").set(5)
    exporters = {name: Exporter(pod.registry) for name, pod in pods.items()}
    targets = {e.address: {"namespace": namespaces[n], "pod": n} for n, e in exporters.items()}

    start = datetime.now(UTC)
    prometheus = PrometheusServer(tmp_path_factory.mktemp("prometheus"),
                                  [static_scrape_config("rtml", targets)])  # fmt: skip
    try:
        try:
            prometheus.start()
        except PrometheusError as e:  # no binary, or it would not start: fail, never skip
            pytest.fail(str(e))
        prometheus.wait_for_scrape(datetime.now(UTC), len(targets))

        # Per target, increase() extrapolates by its own factor (its own scrape phase), so
        # each pod carries the same proportions in its own volume: shares and means are exact.
        # Latencies (both pods): 95% 3 ms, 3% 20 ms, 2% 200 ms. Scores: candidate mean 0.6,
        # champion 0.45. Outcomes: 16 ok, 2 error, 1 rejected, 1 fallback, 10 rate limited.
        for name, volume in (("pod-a", 3), ("pod-b", 2)):
            _observe(variants[(name, MODEL, "candidate")],
                     {0.003: 95 * volume, 0.02: 3 * volume, 0.2: 2 * volume},
                     {"ok": 16 * volume, "error": 2 * volume, "rejected": volume,
                      "fallback": volume, "rate_limited": 10 * volume},
                     {0.5: 5 * volume, 0.7: 5 * volume})  # fmt: skip
            _observe(variants[(name, MODEL, "champion")], {1.0: 50}, {"error": 100},
                     {0.4: 5 * volume, 0.5: 5 * volume})  # fmt: skip
        _observe(variants[("pod-a", MODEL, "shadow")], {}, {"ok": 5}, {0.9: 5})
        # The same model in another namespace, and another model in this one: never counted.
        _observe(variants[("pod-x", MODEL, "candidate")], {0.9: 100}, {"error": 500}, {0.0: 100})
        _observe(variants[("pod-a", "spam", "candidate")], {0.9: 100}, {"error": 500}, {0.0: 100})

        # Two scrapes after the traffic: at least 3 samples per series in the window, which
        # bounds increase()'s extrapolation to the window's end (test_requests_...).
        for _ in range(2):
            prometheus.wait_for_scrape(datetime.now(UTC), len(targets))
        end = datetime.now(UTC)
        source = PrometheusSource(prometheus.url)
        yield Scraped(prometheus, source, Window(NS, MODEL, "candidate", start, end), pods)
        source.close()
    finally:
        prometheus.stop()
        for e in exporters.values():
            e.close()


def test_p99_latency_falls_in_the_bucket_of_the_true_p99(scraped: Scraped) -> None:
    # The true p99 is 200 ms; Prometheus interpolates inside (100 ms, 250 ms].
    p99 = scraped.source.measure("p99LatencyMs", scraped.window)
    assert p99 is not None
    assert 100 < p99 <= 250


def test_error_and_fallback_rates_are_shares_of_the_requests_that_were_not_rate_limited(
    scraped: Scraped,
) -> None:
    # 16 ok + 2 error + 1 rejected + 1 fallback (+ 10 rate limited, not in the denominator).
    assert scraped.source.measure("errorRate", scraped.window) == pytest.approx(3 / 20)
    assert scraped.source.measure("fallbackRate", scraped.window) == pytest.approx(1 / 20)


def test_requests_counts_every_outcome_of_the_candidate(scraped: Scraped) -> None:
    requests = scraped.source.measure("requests", scraped.window)
    # 5 x 30 (100 without the rate-limited ones). increase() extrapolates from each target's
    # last sample to the window's end (up to 1.1 scrape intervals over a sampled span of 2 or
    # more; never before the first sample, which is 0): at most ~1.55 x, far below the 1,000
    # requests of the other namespace and model.
    assert requests is not None
    assert 150 <= requests < 300


def test_score_mean_shift_compares_with_the_champion(scraped: Scraped) -> None:
    # Candidate mean 0.6, champion 0.45; the champion's requests elsewhere do not count.
    assert scraped.source.measure("scoreMeanShift", scraped.window) == pytest.approx(0.15)
    shadow = Window(NS, MODEL, "shadow", scraped.window.start, scraped.window.end)
    assert scraped.source.measure("scoreMeanShift", shadow) == pytest.approx(0.45)


@pytest.mark.parametrize("metric", ["p99LatencyMs", "errorRate", "fallbackRate", "scoreMeanShift"])
def test_no_traffic_is_inconclusive(scraped: Scraped, metric: str) -> None:
    w = scraped.window
    idle = Window(NS, "idle", "candidate", w.start, w.end)  # series at zero: NaN
    ghost = Window(NS, "ghost", "candidate", w.start, w.end)  # no series: an empty vector
    assert scraped.source.measure(metric, idle) is None
    assert scraped.source.measure(metric, ghost) is None


def test_a_window_before_the_traffic_is_inconclusive(scraped: Scraped) -> None:
    w = scraped.window
    before = Window(NS, MODEL, "candidate", w.start - timedelta(minutes=5), w.start)
    assert scraped.source.measure("errorRate", before) is None


def test_pods_applying_reads_each_pods_latest_revision(scraped: Scraped) -> None:
    source, pods = scraped.source, scraped.pods
    assert source.pods_applying(NS, MODEL, "rev-new") == {"pod-a"}
    assert source.pods_applying(NS, MODEL, "rev-old") == {"pod-b"}
    assert source.pods_applying("elsewhere", MODEL, "rev-new") == set()

    gauge = pods["pod-b"].candidate_weight
    gauge.remove(MODEL, "fraud-v2", "rev-old")
    gauge.labels(MODEL, "fraud-v2", "rev-new").set(25)
    switched = datetime.now(UTC)
    scraped.prometheus.wait_for_scrape(switched, len(scraped.prometheus.active_targets()))
    # The old series went stale at that scrape: an instant query no longer sees it.
    assert source.pods_applying(NS, MODEL, "rev-new") == {"pod-a", "pod-b"}
    assert source.pods_applying(NS, MODEL, "rev-old") == set()


def test_a_query_prometheus_refuses_is_unavailable_with_its_reason(scraped: Scraped) -> None:
    with pytest.raises(MetricsUnavailable, match=r"HTTP 400, bad_data: .*sum\("):
        scraped.source.query("sum(")


def test_prometheus_stopped_is_unavailable(
    prometheus_factory: Callable[[list[dict[str, Any]]], PrometheusServer],  # noqa: F811
) -> None:
    prometheus = prometheus_factory([])
    source = PrometheusSource(prometheus.url, timeout_s=2)
    end = datetime.now(UTC)
    w = Window(NS, MODEL, "candidate", end - timedelta(minutes=1), end)
    assert source.measure("errorRate", w) is None
    prometheus.stop()
    with pytest.raises(MetricsUnavailable, match=f"Prometheus at {prometheus.url} did not answer"):
        source.measure("errorRate", w)
    with pytest.raises(MetricsUnavailable, match="did not answer"):
        source.pods_applying(NS, MODEL, "rev")


def _api_pod(name: str, phase: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS, "annotations": annotations},
        "spec": {"containers": [{"name": "runtime", "ports": [{"containerPort": 3000}]}]},
        "status": {"phase": phase, "podIP": "127.0.0.1"},
    }


def test_pod_discovery_keeps_annotated_running_pods_labelled_namespace_and_pod(
    prometheus_factory: Callable[[list[dict[str, Any]]], PrometheusServer],  # noqa: F811
) -> None:
    exporter = Exporter(RuntimeMetrics().registry)
    port = exporter.address.rsplit(":", 1)[1]
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": port,
              "prometheus.io/path": "/metrics"}  # fmt: skip
    pods = [_api_pod("runtime-1", "Running", scrape),
            _api_pod("quiet", "Running", {**scrape, "prometheus.io/scrape": "false"}),
            _api_pod("done", "Succeeded", scrape)]  # fmt: skip
    bridge = PodDiscoveryBridge(lambda: pods)
    try:
        prometheus = prometheus_factory([http_pod_scrape_config("pods", bridge.url)])
        prometheus.wait_for_scrape(datetime.now(UTC), 1)
        (target,) = prometheus.active_targets()
        assert target["scrapeUrl"] == f"http://127.0.0.1:{port}/metrics"
        assert {k: target["labels"][k] for k in ("namespace", "pod")} == {
            "namespace": NS,
            "pod": "runtime-1",
        }
        # Debian's build refuses Kubernetes discovery outright; the error says what to use.
        config = kubernetes_pod_scrape_config("k8s", "https://127.0.0.1:6443", "ca", "c", "k", [NS])
        with pytest.raises(PrometheusError, match="built without Kubernetes discovery"):
            prometheus.reload([config])
        assert bridge.errors == []
    finally:
        bridge.close()
        exporter.close()
