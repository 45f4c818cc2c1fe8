"""The analysis queries as text, and PrometheusSource against a stub HTTP server on loopback
(the real Prometheus is tests/integration/test_analysis.py)."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from prometheus_client.exposition import generate_latest

from rtml.operator.analysis import (
    METRICS,
    MetricsUnavailable,
    PrometheusSource,
    Window,
    label_value,
    pods_applying_promql,
    promql,
)
from rtml_runtime.metrics import OUTCOMES, RuntimeMetrics

pytestmark = pytest.mark.unit
END = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
W = Window("ml", "fraud", "candidate", END - timedelta(minutes=5), END)


def test_error_rate_query_reads_as_documented() -> None:
    sel = 'namespace="ml",model="fraud",variant="candidate"'
    assert promql("errorRate", W) == (
        f'(sum(increase(rtml_requests_total{{{sel},outcome=~"error|rejected"}}[300s])) '
        f"or vector(0)) / "
        f'sum(increase(rtml_requests_total{{{sel},outcome!="rate_limited"}}[300s]))'
    )


def test_p99_is_in_milliseconds_from_summed_bucket_increases() -> None:
    assert promql("p99LatencyMs", W) == (
        "1000 * histogram_quantile(0.99, sum by (le) (increase(rtml_request_duration_seconds_"
        'bucket{namespace="ml",model="fraud",variant="candidate"}[300s])))'
    )


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("variant", ["candidate", "shadow"])
def test_every_selector_filters_namespace_model_and_a_variant(metric: str, variant: str) -> None:
    w = Window("ml", "fraud", variant, W.start, W.end)  # type: ignore[arg-type]
    selectors = re.findall(r"\{([^}]*)\}", promql(metric, w))
    assert selectors
    for sel in selectors:
        assert sel.startswith('namespace="ml",model="fraud",variant=')
    variants = {re.search(r'variant="(\w+)"', s).group(1) for s in selectors}  # type: ignore[union-attr]
    assert variants == ({variant, "champion"} if metric == "scoreMeanShift" else {variant})
    assert set(re.findall(r"\[(\d+)s\]", promql(metric, w))) == {"300"}


def test_score_mean_shift_is_the_absolute_difference_of_two_means() -> None:
    q = promql("scoreMeanShift", W)
    assert q.startswith("abs((sum(increase(rtml_prediction_score_sum{")
    assert q.count("rtml_prediction_score_count") == 2
    assert ") - (" in q


def test_label_values_are_escaped() -> None:
    assert label_value('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    w = Window('ns"x', "m\\", "candidate", W.start, W.end)
    assert 'namespace="ns\\"x",model="m\\\\"' in promql("requests", w)
    assert pods_applying_promql("ml", "fraud", 'r"1') == (
        'rtml_candidate_weight{namespace="ml",model="fraud",revision="r\\"1"} > 0'
    )


def test_window_seconds_round_down_and_are_at_least_one() -> None:
    assert Window("n", "m", "candidate", END - timedelta(seconds=59.9), END).seconds == 59
    assert Window("n", "m", "candidate", END, END).seconds == 1


def test_window_refuses_naive_times_reversed_ends_and_the_champion() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Window("n", "m", "candidate", datetime(2026, 1, 1), END)
    with pytest.raises(ValueError, match="before it starts"):
        Window("n", "m", "candidate", END, END - timedelta(seconds=1))
    with pytest.raises(ValueError, match="candidate or shadow"):
        Window("n", "m", "champion", W.start, END)  # type: ignore[arg-type]


def test_unknown_metric_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown analysis metric 'latency'"):
        promql("latency", W)


def test_the_queries_name_series_the_runtime_exports() -> None:
    # The operator may not import the runtime (import-linter); this keeps the names in step.
    runtime = RuntimeMetrics()
    runtime.variant("fraud", "v2", "candidate")
    runtime.candidate_weight.labels("fraud", "fraud-v2", "r1").set(5)
    exported = set(re.findall(r"^(\w+)\{", generate_latest(runtime.registry).decode(), re.M))
    queries = [promql(m, W) for m in METRICS] + [pods_applying_promql("ml", "fraud", "r1")]
    queried = {name for q in queries for name in re.findall(r"(rtml_\w+)\{", q)}
    assert queried <= exported
    assert {"error", "rejected", "fallback", "rate_limited"} <= set(OUTCOMES)


class Stub:
    """A stand-in for Prometheus answering each query with the next canned (status, body)."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, str]] = []
        self.requests: list[tuple[dict[str, list[str]], str | None]] = []
        self.delay = 0.0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub.requests.append(
                    (parse_qs(urlparse(self.path).query), self.headers.get("Authorization"))
                )
                time.sleep(stub.delay)
                status, body = stub.answers.pop(0)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # timed out
                    self.send_response(status)
                    self.end_headers()
                    self.wfile.write(body.encode())

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.block_on_close = False  # a handler still sleeping is left behind
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, data: Any, status: int = 200, outcome: str = "success") -> None:
        self.answers.append((status, json.dumps({"status": outcome, "data": data})))


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    yield s
    s.server.shutdown()
    s.server.server_close()


def _vector(*values: str) -> dict[str, Any]:
    return {"resultType": "vector", "result": [{"metric": {}, "value": [1, v]} for v in values]}


def test_measure_evaluates_at_the_window_end_with_a_server_side_timeout(stub: Stub) -> None:
    stub.answer(_vector("0.25"))
    assert PrometheusSource(stub.url, timeout_s=3).measure("errorRate", W) == 0.25
    (params, auth) = stub.requests[0]
    assert params["query"] == [promql("errorRate", W)]
    assert params["time"] == [f"{END.timestamp():.3f}"]
    assert params["timeout"] == ["3s"]
    assert auth is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_vector(), None),
        (_vector("NaN"), None),
        (_vector("+Inf"), None),
        (_vector("0.1", "NaN", "0.3"), 0.3),  # several series: the worst finite one
        ({"resultType": "scalar", "result": [1, "2.5"]}, 2.5),
        ({"resultType": "scalar", "result": [1, "NaN"]}, None),
    ],
)
def test_measure_answers(stub: Stub, data: dict[str, Any], expected: float | None) -> None:
    stub.answer(data)
    assert PrometheusSource(stub.url).measure("p99LatencyMs", W) == expected


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (503, "<html>down</html>", r"answered HTTP 503 with a body that is not its JSON"),
        (400, json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}),
         r"refused the query \(HTTP 400, bad_data: parse error\)"),
        (200, json.dumps({"status": "success"}), "answered without data"),
        (200, json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}}),
         "answered a matrix where an instant vector was expected"),
        (200, json.dumps({"status": "success", "data": {"resultType": "vector",
                                                        "result": [{"value": "x"}]}}),
         "answered a vector that is not shaped as one"),
    ],
)  # fmt: skip
def test_what_prometheus_cannot_answer_is_unavailable(
    stub: Stub, status: int, body: str, message: str
) -> None:
    stub.answers.append((status, body))
    with pytest.raises(MetricsUnavailable, match=f"Prometheus at {stub.url} {message}"):
        PrometheusSource(stub.url).measure("errorRate", W)


def test_a_slow_prometheus_times_out_as_unavailable(stub: Stub) -> None:
    stub.delay = 3.0
    stub.answer(_vector("1"))
    began = time.monotonic()
    with pytest.raises(MetricsUnavailable, match=r"did not answer.*timed out"):
        PrometheusSource(stub.url, timeout_s=0.2).measure("errorRate", W)
    assert time.monotonic() - began < 2.0


def test_nothing_listening_is_unavailable() -> None:
    with pytest.raises(MetricsUnavailable, match=r"Prometheus at http://127.0.0.1:1 did not"):
        PrometheusSource("http://127.0.0.1:1/").measure("errorRate", W)


def test_pods_applying_names_the_pod_label_of_each_series(stub: Stub) -> None:
    stub.answer({"resultType": "vector", "result": [
        {"metric": {"pod": "a", "revision": "r1"}, "value": [1, "25"]},
        {"metric": {"pod": "b", "revision": "r1"}, "value": [1, "25"]},
        {"metric": {"revision": "r1"}, "value": [1, "25"]},
    ]})  # fmt: skip
    assert PrometheusSource(stub.url).pods_applying("ml", "fraud", "r1") == {"a", "b"}
    assert stub.requests[0][0]["query"] == [pods_applying_promql("ml", "fraud", "r1")]
    assert "time" not in stub.requests[0][0]


def test_bearer_token_and_a_token_file_read_at_each_query(stub: Stub, tmp_path: Path) -> None:
    stub.answer(_vector("1"))
    PrometheusSource(stub.url, bearer_token="abc").measure("requests", W)
    token = tmp_path / "token"
    token.write_text("first\n")
    source = PrometheusSource(stub.url, bearer_token_file=token)
    stub.answer(_vector("1"))
    source.measure("requests", W)
    token.write_text("rotated")
    stub.answer(_vector("1"))
    source.measure("requests", W)
    assert [auth for _, auth in stub.requests] == [
        "Bearer abc",
        "Bearer first",
        "Bearer rotated",
    ]
    token.unlink()
    with pytest.raises(MetricsUnavailable, match=r"token file .* cannot be read"):
        source.measure("requests", W)
    with pytest.raises(ValueError, match="not both"):
        PrometheusSource(stub.url, bearer_token="a", bearer_token_file=token)
