"""The shadow worker: micro-batches, per-row metrics, errors, drops and a clean stop."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rtml_runtime.breaker import CircuitBreaker
from rtml_runtime.metrics import RuntimeMetrics
from rtml_runtime.onnx_model import OnnxModel
from rtml_runtime.shadow import ShadowScorer, score_batch
from rtml_runtime.variants import SHADOW, Variant
from tests.unit.runtime.onnx_fixtures import write_sum_model
from tests.unit.runtime.test_engine import sigmoid

pytestmark = pytest.mark.unit
LABELS = {"model": "fraud", "version": "v2", "variant": "shadow"}


class Recording:
    """A real model whose batch calls are counted, and can be held until released."""

    def __init__(self, model: OnnxModel, fail: bool = False) -> None:
        self.model = model
        self.feature_names = model.feature_names
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail = fail

    def predict_rows(self, rows: Sequence[Sequence[float]]) -> list[float]:
        self.calls.append(len(rows))
        self.entered.set()
        assert self.release.wait(5)
        if self.fail:
            raise RuntimeError("the candidate cannot score")
        return self.model.predict_rows(rows)


@pytest.fixture
def model(tmp_path: Path) -> OnnxModel:
    return OnnxModel(write_sum_model(tmp_path / "c.onnx", ["amount"]))


def make_variant(model: Any, metrics: RuntimeMetrics, window: int = 1000) -> Variant:
    breaker = CircuitBreaker(
        "model",
        failure_rate_threshold=50,
        slow_call_ms=1000,
        slow_call_rate_threshold=100,
        window_size=window,
        minimum_calls=window,
        open_duration_s=60,
        half_open_calls=1,
    )
    return Variant(
        SHADOW,
        "v2",
        model,
        ["amount"],
        breaker,
        metrics.variant("fraud", "v2", SHADOW),
        metrics.shadow_dropped.labels("fraud", "v2", SHADOW),
    )


def sample(metrics: RuntimeMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {**LABELS, **labels}) or 0.0


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.mark.parametrize("linger_s", [0.0, 0.002])
def test_what_queued_while_the_worker_scored_is_scored_in_batches(
    model: OnnxModel, linger_s: float
) -> None:
    metrics = RuntimeMetrics()
    recording = Recording(model)
    variant = make_variant(recording, metrics)
    scorer = ShadowScorer(1000, max_batch=64, linger_s=linger_s)
    scorer.start()
    recording.release.clear()
    assert scorer.submit(variant, {"amount": 0.0})
    assert recording.entered.wait(5)  # the worker holds the first row
    amounts = [i / 100 for i in range(1, 101)]
    for a in amounts:
        assert scorer.submit(variant, {"amount": a})
    recording.release.set()
    wait_for(lambda: sample(metrics, "rtml_requests_total", outcome="ok") == 101)
    scorer.close()
    assert recording.calls == [1, 64, 36]  # 101 rows, 3 model calls, none over the cap
    assert sample(metrics, "rtml_prediction_score_count") == 101
    assert sample(metrics, "rtml_request_duration_seconds_count") == 101
    expected = sigmoid(0.0) + sum(sigmoid(a) for a in amounts)
    assert sample(metrics, "rtml_prediction_score_sum") == pytest.approx(expected, rel=1e-6)
    assert sample(metrics, "rtml_requests_total", outcome="error") == 0
    assert variant.breaker.buffered_calls == 101  # one breaker record per row


def test_a_batch_records_each_row_with_the_batch_time_divided_among_them(
    model: OnnxModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = RuntimeMetrics()
    variant = make_variant(model, metrics)
    ticks = iter([10.0, 10.8])  # the batch of 4 took 0.8 s
    clock = SimpleNamespace(perf_counter=lambda: next(ticks))
    monkeypatch.setattr("rtml_runtime.shadow.time", clock)
    score_batch([(variant, {"amount": 1.0})] * 4)
    assert sample(metrics, "rtml_request_duration_seconds_count") == 4
    assert sample(metrics, "rtml_request_duration_seconds_sum") == pytest.approx(0.8)
    assert sample(metrics, "rtml_request_duration_seconds_bucket", le="0.25") == 4


def test_a_failing_batch_counts_an_error_per_row_and_the_worker_carries_on(
    model: OnnxModel,
) -> None:
    metrics = RuntimeMetrics()
    failing = Recording(model, fail=True)
    variant = make_variant(failing, metrics)
    scorer = ShadowScorer(1000, linger_s=0.0)
    scorer.start()
    failing.release.clear()
    scorer.submit(variant, {"amount": 0.0})
    assert failing.entered.wait(5)
    for _ in range(20):
        scorer.submit(variant, {"amount": 1.0})
    failing.release.set()
    wait_for(lambda: sample(metrics, "rtml_requests_total", outcome="error") == 21)
    assert failing.calls[:2] == [1, 20]  # the batch of 20, then each of its rows alone
    assert sample(metrics, "rtml_request_duration_seconds_count") == 21
    assert sample(metrics, "rtml_prediction_score_count") == 0
    # The worker is alive: the next rows (of a model that works) are scored.
    healthy = make_variant(model, metrics)
    scorer.submit(healthy, {"amount": 2.0})
    wait_for(lambda: sample(metrics, "rtml_requests_total", outcome="ok") == 1)
    scorer.close()
    assert sample(metrics, "rtml_prediction_score_sum") == pytest.approx(sigmoid(2.0))


def test_a_row_the_model_refuses_is_the_only_error_of_its_batch(model: OnnxModel) -> None:
    metrics = RuntimeMetrics()
    variant = make_variant(model, metrics)
    rows = [{"amount": 1.0}] * 5 + [{"amount": "not a number"}] + [{"amount": 1.0}] * 5
    score_batch([(variant, r) for r in rows])
    assert sample(metrics, "rtml_requests_total", outcome="ok") == 10
    assert sample(metrics, "rtml_requests_total", outcome="error") == 1
    assert sample(metrics, "rtml_prediction_score_sum") == pytest.approx(10 * sigmoid(1.0))


def test_an_open_breaker_rejects_each_row_without_a_model_call(model: OnnxModel) -> None:
    metrics = RuntimeMetrics()
    failing = Recording(model, fail=True)
    variant = make_variant(failing, metrics, window=4)
    score_batch([(variant, {"amount": 1.0})] * 4)  # 4 failures of 4: the breaker opens
    calls = len(failing.calls)
    score_batch([(variant, {"amount": 1.0})] * 10)
    assert len(failing.calls) == calls
    assert sample(metrics, "rtml_requests_total", outcome="error") == 4
    assert sample(metrics, "rtml_requests_total", outcome="rejected") == 10


def test_a_batch_of_two_plans_scores_each_variant_with_its_own_model(
    model: OnnxModel, tmp_path: Path
) -> None:
    metrics = RuntimeMetrics()
    first = make_variant(model, metrics)
    other_model = OnnxModel(write_sum_model(tmp_path / "d.onnx", ["amount"], bias=1.0))
    other_metrics = RuntimeMetrics()
    second = make_variant(other_model, other_metrics)
    score_batch([(first, {"amount": 0.0}), (second, {"amount": 0.0}), (first, {"amount": 0.0})])
    assert sample(metrics, "rtml_prediction_score_sum") == pytest.approx(2 * sigmoid(0.0))
    assert sample(other_metrics, "rtml_prediction_score_sum") == pytest.approx(sigmoid(1.0))


def test_a_full_queue_drops_and_counts_while_the_worker_scores(model: OnnxModel) -> None:
    metrics = RuntimeMetrics()
    recording = Recording(model)
    variant = make_variant(recording, metrics)
    scorer = ShadowScorer(3, linger_s=0.0)
    scorer.start()
    recording.release.clear()
    scorer.submit(variant, {"amount": 0.0})
    assert recording.entered.wait(5)
    accepted = [scorer.submit(variant, {"amount": 1.0}) for _ in range(10)]
    assert accepted == [True] * 3 + [False] * 7
    assert scorer.pending == 3
    assert sample(metrics, "rtml_shadow_dropped_total") == 7
    recording.release.set()
    wait_for(lambda: sample(metrics, "rtml_requests_total", outcome="ok") == 4)
    scorer.close()
    assert recording.calls == [1, 3]


def test_close_stops_after_the_batch_being_scored_and_drops_the_rest(model: OnnxModel) -> None:
    metrics = RuntimeMetrics()
    recording = Recording(model)
    variant = make_variant(recording, metrics)
    scorer = ShadowScorer(100, linger_s=0.0)
    scorer.start()
    recording.release.clear()
    scorer.submit(variant, {"amount": 0.0})
    assert recording.entered.wait(5)
    for _ in range(10):
        scorer.submit(variant, {"amount": 1.0})
    closing = threading.Thread(target=scorer.close)
    closing.start()
    wait_for(scorer._stopping.is_set)
    recording.release.set()
    closing.join(5)
    assert not closing.is_alive()
    assert scorer._thread is None
    assert recording.calls == [1]  # the row in hand was scored; the queued ones were not
    assert sample(metrics, "rtml_requests_total", outcome="ok") == 1


def test_the_worker_thread_alone_runs_at_the_lowest_priority() -> None:
    from rtml_runtime.shadow import lowest_priority

    seen: list[int] = []

    def worker() -> None:
        lowest_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [19]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19  # not the caller's
