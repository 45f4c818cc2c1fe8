"""The shadow worker: batch scoring semantics (pure), the result frames, and the real child
process (started with the real interpreter and a real ONNX model): scores, drops, priority, stop.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rtml_runtime.breaker import CircuitBreaker
from rtml_runtime.metrics import RuntimeMetrics
from rtml_runtime.onnx_model import OnnxModel
from rtml_runtime.prometheus_compat import add_observations, check
from rtml_runtime.shadow import (
    DURATION_BOUNDS,
    SCORE_BOUNDS,
    Rows,
    ShadowScorer,
    ShadowTally,
    decode_reports,
    record_reports,
    score_rows,
)
from rtml_runtime.variants import SHADOW, Variant
from tests.unit.runtime.onnx_fixtures import write_sum_model
from tests.unit.runtime.test_engine import sigmoid

pytestmark = pytest.mark.unit
LABELS = {"model": "fraud", "version": "v2", "variant": "shadow"}


class Recording:
    """A real model whose batch calls are counted; `fail` makes every call raise."""

    def __init__(self, model: OnnxModel, fail: bool = False) -> None:
        self.model = model
        self.calls: list[int] = []
        self.fail = fail

    def predict_rows(self, rows: Rows) -> list[float]:
        self.calls.append(len(rows))
        if self.fail:
            raise RuntimeError("the candidate cannot score")
        return self.model.predict_rows(rows)


@pytest.fixture
def model(tmp_path: Path) -> OnnxModel:
    return OnnxModel(write_sum_model(tmp_path / "c.onnx", ["amount"]))


def make_breaker(window: int = 1000) -> CircuitBreaker:
    return CircuitBreaker(
        "model",
        failure_rate_threshold=50,
        slow_call_ms=1000,
        slow_call_rate_threshold=100,
        window_size=window,
        minimum_calls=window,
        open_duration_s=60,
        half_open_calls=1,
    )


def make_variant(model: OnnxModel, metrics: RuntimeMetrics, window: int = 1000) -> Variant:
    return Variant(
        SHADOW,
        "v2",
        model,
        ["amount"],
        make_breaker(window),
        metrics.variant("fraud", "v2", SHADOW),
        metrics.shadow_dropped.labels("fraud", "v2", SHADOW),
        metrics.breaker_state.labels("fraud", "v2", SHADOW, "model"),
    )


def sample(metrics: RuntimeMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {**LABELS, **labels}) or 0.0


def wait_for(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- scoring a batch (what the child runs), in process --------------------------------------------
def test_a_batch_is_one_model_call_with_its_time_divided_among_the_rows(
    model: OnnxModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    recording = Recording(model)
    ticks = iter([10.0, 10.8])  # the batch of 4 took 0.8 s
    monkeypatch.setattr(
        "rtml_runtime.shadow.time", SimpleNamespace(perf_counter=lambda: next(ticks))
    )
    out = ShadowTally()
    breaker = make_breaker()
    score_rows(recording, breaker, [[1.0]] * 4, out)
    assert recording.calls == [4]
    assert out.ok == 4
    assert out.duration_sum == pytest.approx(0.8)
    assert out.durations[DURATION_BOUNDS.index(0.25)] == 4  # 0.2 s each: the 0.25 s bucket
    assert out.score_sum == pytest.approx(4 * sigmoid(1.0))
    assert breaker.buffered_calls == 4  # one breaker record per row


def test_a_row_the_model_refuses_is_the_only_error_of_its_batch(model: OnnxModel) -> None:
    out = ShadowTally()
    rows: list[list[Any]] = [[1.0]] * 5 + [["not a number"]] + [[1.0]] * 5
    score_rows(model, make_breaker(), rows, out)
    assert (out.ok, out.errors, out.rejected_rows) == (10, 1, 0)
    assert sum(out.durations) == 11


def test_a_failing_batch_counts_an_error_per_row(model: OnnxModel) -> None:
    failing = Recording(model, fail=True)
    out = ShadowTally()
    score_rows(failing, make_breaker(), [[1.0]] * 20, out)
    assert failing.calls == [20] + [1] * 20  # the batch, then each of its rows alone
    assert (out.ok, out.errors) == (0, 20)


def test_an_open_breaker_rejects_each_row_without_a_model_call(model: OnnxModel) -> None:
    failing = Recording(model, fail=True)
    breaker = make_breaker(window=4)
    score_rows(failing, breaker, [[1.0]] * 4, ShadowTally())  # 4 failures of 4: open
    calls = len(failing.calls)
    out = ShadowTally()
    score_rows(failing, breaker, [[1.0]] * 10, out)
    assert len(failing.calls) == calls
    assert (out.ok, out.errors, out.rejected_rows) == (0, 0, 10)
    assert out.breaker_state == 1  # open


def test_reports_survive_any_cut_of_the_stream() -> None:
    first, second = ShadowTally(), ShadowTally()
    first.record_ok(0.001, [0.25, 0.5])
    first.record_error(0.002)
    second.record_rejected(3)
    second.breaker_state = 2
    data = first.encode() + second.encode()
    for cut in range(len(data) + 1):
        a, rest = decode_reports(data[:cut])
        b, left = decode_reports(rest + data[cut:])
        assert left == b""
        assert a + b == [first, second]


def test_reports_land_on_the_shadow_variants_metrics_as_observe_would_put_them(
    model: OnnxModel,
) -> None:
    metrics, replayed = RuntimeMetrics(), RuntimeMetrics()
    variant = make_variant(model, metrics)
    out = ShadowTally()
    out.record_ok(0.5, [0.25, 0.75, 1.5, float("nan")])
    out.record_error(0.1)
    out.record_rejected(4)
    out.breaker_state = 1
    reports, _ = decode_reports(out.encode())
    assert record_reports(variant, reports) == 9
    # What four observations of each would have exported, row by row.
    m = replayed.variant("fraud", "v2", SHADOW)
    for seconds in (0.5, 0.5, 0.5, 0.5, 0.1):
        m.duration.observe(seconds)
    for score in (0.25, 0.75, 1.5, float("nan")):
        m.score.observe(score)

    def histograms(r: RuntimeMetrics) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name, s.labels, s.value)
            for family in r.registry.collect()
            if family.name in ("rtml_request_duration_seconds", "rtml_prediction_score")
            for s in family.samples
            if not s.name.endswith("_created") and not s.name.endswith("_sum")
        ]

    assert histograms(metrics) == histograms(replayed)
    assert sample(metrics, "rtml_request_duration_seconds_sum") == pytest.approx(2.1)
    assert sample(metrics, "rtml_requests_total", outcome="ok") == 4
    assert sample(metrics, "rtml_requests_total", outcome="error") == 1
    assert sample(metrics, "rtml_requests_total", outcome="rejected") == 4
    state = metrics.registry.get_sample_value(
        "rtml_circuit_breaker_state", {**LABELS, "dependency": "model"}
    )
    assert state == 1


def test_the_prometheus_compat_check_passes_and_refuses_a_wrong_bucket_count() -> None:
    check()  # this prometheus_client keeps histograms as prometheus_compat assumes
    child = RuntimeMetrics().variant("fraud", "v2", SHADOW).score
    with pytest.raises(ValueError, match="bucket counts"):
        add_observations(child, [1] * (len(SCORE_BOUNDS) - 1), 1.0)


# -- the child process -----------------------------------------------------------------------------
def test_the_child_scores_what_is_submitted_and_stops_on_close(model: OnnxModel) -> None:
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    metrics = RuntimeMetrics()
    variant = make_variant(model, metrics)
    scorer = ShadowScorer(1000)
    scorer.use(variant)
    proc = scorer.process
    assert proc is not None
    amounts = [i / 100 for i in range(101)]
    assert all(scorer.submit(variant, {"amount": a}) for a in amounts)
    wait_for(lambda: sample(metrics, "rtml_requests_total", outcome="ok") == 101)
    assert scorer.pending == 0
    expected = sum(sigmoid(a) for a in amounts)
    assert sample(metrics, "rtml_prediction_score_sum") == pytest.approx(expected, rel=1e-6)
    assert sample(metrics, "rtml_request_duration_seconds_count") == 101
    # The child runs in the idle class (a waking server always preempts it), this one not.
    assert os.sched_getscheduler(proc.proc.pid) == os.SCHED_IDLE
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
    assert os.getpriority(os.PRIO_PROCESS, 0) == ours
    scorer.close()
    assert scorer.process is None
    assert proc.proc.returncode is not None
    assert not scorer.submit(variant, {"amount": 1.0})  # no worker: dropped and counted
    assert sample(metrics, "rtml_shadow_dropped_total") == 1


def test_a_full_queue_drops_and_counts_while_the_child_is_busy(model: OnnxModel) -> None:
    metrics = RuntimeMetrics()
    variant = make_variant(model, metrics)
    scorer = ShadowScorer(1)  # the smallest pipe the kernel gives: one page, 512 rows of 8 bytes
    scorer.use(variant)
    proc = scorer.process
    assert proc is not None
    assert scorer.submit(variant, {"amount": 0.0})
    wait_for(lambda: sample(metrics, "rtml_requests_total", outcome="ok") == 1)
    os.kill(proc.proc.pid, signal.SIGSTOP)  # a candidate that cannot keep up
    try:
        accepted = sum(scorer.submit(variant, {"amount": 1.0}) for _ in range(2000))
    finally:
        os.kill(proc.proc.pid, signal.SIGCONT)
    assert 0 < accepted < 2000
    assert sample(metrics, "rtml_shadow_dropped_total") == 2000 - accepted
    wait_for(lambda: sample(metrics, "rtml_requests_total", outcome="ok") == 1 + accepted)
    scorer.close()


def test_a_value_that_is_not_a_number_is_an_error_of_its_row(model: OnnxModel) -> None:
    metrics = RuntimeMetrics()
    variant = make_variant(model, metrics)
    scorer = ShadowScorer(100)
    scorer.use(variant)
    assert scorer.submit(variant, {"amount": "x"})
    assert scorer.submit(variant, {"amount": None})  # missing: NaN, which the model takes
    wait_for(lambda: sample(metrics, "rtml_requests_total", outcome="ok") == 1)
    assert sample(metrics, "rtml_requests_total", outcome="error") == 1
    scorer.close()


def test_a_new_variant_gets_a_new_child_and_the_old_one_stops(
    model: OnnxModel, tmp_path: Path
) -> None:
    metrics = RuntimeMetrics()
    first = make_variant(model, metrics)
    other = OnnxModel(write_sum_model(tmp_path / "d.onnx", ["amount"], bias=1.0))
    other_metrics = RuntimeMetrics()
    second = make_variant(other, other_metrics)
    scorer = ShadowScorer(100)
    scorer.use(first)
    old = scorer.process
    assert old is not None
    scorer.use(first)
    assert scorer.process is old  # the same variant keeps its child
    scorer.use(second)
    assert old.proc.returncode is not None
    assert not scorer.submit(first, {"amount": 0.0})  # a row for the old plan: dropped
    assert scorer.submit(second, {"amount": 0.0})
    wait_for(
        lambda: (
            (other_metrics.registry.get_sample_value("rtml_prediction_score_sum", LABELS) or 0.0)
            > 0
        )
    )
    assert other_metrics.registry.get_sample_value(
        "rtml_prediction_score_sum", LABELS
    ) == pytest.approx(sigmoid(1.0))
    scorer.close()


def test_the_child_exits_when_the_serving_process_closes_its_queue(model: OnnxModel) -> None:
    variant = make_variant(model, RuntimeMetrics())
    scorer = ShadowScorer(100)
    scorer.use(variant)
    proc = scorer.process
    assert proc is not None
    os.close(proc._rows)  # what the kernel does when the serving process dies
    proc._rows = -1
    assert proc.proc.wait(20) == 0
    proc._reader.join(5)
