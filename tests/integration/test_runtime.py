"""The runtime as a real process over HTTP, reading features from Feast's Redis online store."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.runtime_proc import REPO, RedisServer, RuntimeProcess, write_manifest

pytestmark = [pytest.mark.runtime, pytest.mark.redis, pytest.mark.feast]
REQUEST = json.loads((REPO / "examples/fraud/request.json").read_text())
BREAKER = {
    "windowSize": 20,
    "minimumCalls": 10,
    "openDuration": "2s",
    "halfOpenCalls": 3,
    "failureRateThreshold": 50,
}
# The shared runtime's deadlines leave room for a slow stretch beside a control plane on two
# cores: with a 10 ms budget one such stretch opened its feature breaker and failed the tests
# after it. The outage test below has its own process, with a budget it measures against.
SLO = {"p99LatencyMs": 50, "timeoutMs": 2000, "featureBudgetMs": 1000}
OUTAGE_SLO = {"p99LatencyMs": 50, "timeoutMs": 5000, "featureBudgetMs": 100}


@pytest.fixture(scope="module")
def runtime(
    fraud_build: Path, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeProcess]:
    manifest = write_manifest(
        fraud_build, tmp_path_factory.mktemp("main"), slo=SLO, circuitBreaker=BREAKER
    )
    proc = RuntimeProcess(manifest, redis_server.url)
    proc.start()
    yield proc
    proc.stop()


def test_health_and_model_metadata(runtime: RuntimeProcess) -> None:
    assert runtime.get("/v2/health/live")[0] == 200
    assert runtime.get("/v2/health/ready") == (200, {"ready": True})
    status, meta = runtime.get("/v2/models/fraud")
    assert status == 200
    assert len(meta["inputs"]) == 30
    assert runtime.get("/v2/models/fraud/ready")[0] == 200


def test_single_prediction_reads_features_from_redis(runtime: RuntimeProcess) -> None:
    status, body, _ = runtime.post("/predict", REQUEST)
    assert status == 200, body
    assert 0.0 <= body["score"] <= 1.0
    assert body["degraded"] is False  # the entity was materialised into Redis
    assert (body["model"], body["version"], body["variant"]) == ("fraud", "v1", "champion")
    assert body["latency_ms"] > 0  # measured by the runtime (under timeoutMs: it is a 200)


def test_unknown_entity_gets_defaults_and_is_degraded(runtime: RuntimeProcess) -> None:
    status, body, _ = runtime.post("/predict", {**REQUEST, "card_id": "no-such-card"})
    assert status == 200, body
    assert body["degraded"] is True


def test_batch_prediction(runtime: RuntimeProcess) -> None:
    rows = [REQUEST, {**REQUEST, "card_id": "no-such-card"}, REQUEST]
    status, body, _ = runtime.post("/predict_batch", {"instances": rows})
    assert status == 200, body
    assert [p["degraded"] for p in body["predictions"]] == [False, True, False]
    assert body["predictions"][0]["score"] == body["predictions"][2]["score"]


def test_open_inference_protocol_infer(runtime: RuntimeProcess) -> None:
    _, meta = runtime.get("/v2/models/fraud")
    inputs = [
        {"name": i["name"], "shape": [2, 1], "datatype": "FP32", "data": [0.1, 0.9]}
        for i in meta["inputs"]
    ]
    status, body, _ = runtime.post("/v2/models/fraud/infer", {"id": "r1", "inputs": inputs})
    assert status == 200, body
    (out,) = body["outputs"]
    assert out["name"] == "score"
    assert out["shape"] == [2]
    assert body["id"] == "r1"


HOSTILE_BATCHES = {
    # A lone surrogate: no UTF-8 for it, so Feast's key encoder cannot take it.
    "unencodable entity id": b'{"instances": ['
    + b",".join(
        json.dumps({**REQUEST, "card_id": "PLACEHOLDER"})
        .encode()
        .replace(b"PLACEHOLDER", rb"\ud800")
        for _ in range(256)
    )
    + b"]}",
    # 400 digits: no float32 holds it (this answered 500 once).
    "huge feature value": b'{"instances": ['
    + b",".join(
        json.dumps({**REQUEST, "features": {**REQUEST["features"], "amount": 0}})
        .encode()
        .replace(b'"amount": 0', b'"amount": ' + b"9" * 400)
        for _ in range(256)
    )
    + b"]}",
}


@pytest.mark.parametrize("case", list(HOSTILE_BATCHES))
def test_a_hostile_batch_is_a_400_and_the_next_caller_is_served_from_the_store(
    runtime: RuntimeProcess, case: str
) -> None:
    """issue 12: one caller's 256 unencodable rows once opened the feature breaker for 30 s,
    and every other caller got 503. Bad input is the caller's, never the store's failure."""
    labels = {"model": "fraud", "version": "v1", "variant": "champion"}
    reads_before = runtime.metric("rtml_feature_read_duration_seconds_count", **labels) or 0
    for _ in range(3):  # 768 rows: far over the breaker's window had they counted
        status, body, _ = runtime.post("/predict_batch", HOSTILE_BATCHES[case])
        assert status == 400, body
        assert body["error"]["field"].startswith("instances[0]."), body
    assert runtime.metric("rtml_feature_read_duration_seconds_count", **labels) == reads_before
    assert runtime.metric("rtml_circuit_breaker_state", dependency="features", **labels) == 0
    status, body, _ = runtime.post("/predict", REQUEST)
    assert (status, body["degraded"]) == (200, False), body


def test_too_many_rows_is_413_on_both_batch_paths(runtime: RuntimeProcess) -> None:
    """Over RTML_MAX_BATCH_ROWS (256) is "too large", as an oversized body is: 413."""
    _, meta = runtime.get("/v2/models/fraud")
    inputs = [
        {"name": i["name"], "shape": [257, 1], "datatype": "FP32", "data": [0.5] * 257}
        for i in meta["inputs"]
    ]
    for path, body in [
        ("/v2/models/fraud/infer", {"inputs": inputs}),
        ("/predict_batch", {"instances": [REQUEST] * 257}),
    ]:
        status, answer, _ = runtime.post(path, body)
        assert status == 413, (path, answer)
        assert answer["error"]["code"] == "too_many_rows", answer
        assert "256" in answer["error"]["message"], answer
    # 256 rows is within the cap.
    assert runtime.post("/predict_batch", {"instances": [REQUEST] * 256})[0] == 200


BIG = b'{"card_id": "x", "pad": "' + b"x" * (1 << 20) + b'"}'
BAD_INPUTS: list[tuple[str, str, Any, int, str | None]] = [
    ("malformed JSON", "/predict", b'{"card_id": ', 400, None),
    ("body is not an object", "/predict", [1, 2], 400, None),
    ("missing entity key", "/predict", {"features": REQUEST["features"]}, 400, "card_id"),
    ("entity of the wrong type", "/predict", {**REQUEST, "card_id": {"id": 1}}, 400, "card_id"),
    (
        "feature of the wrong type",
        "/predict",
        {**REQUEST, "features": {**REQUEST["features"], "amount": "12"}},
        400,
        "features.amount",
    ),
    (
        "unknown feature name",
        "/predict",
        {**REQUEST, "features": {**REQUEST["features"], "colour": 1}},
        400,
        "features.colour",
    ),
    (
        "missing request feature",
        "/predict",
        {**REQUEST, "features": {"amount": 1.0}},
        400,
        "features.merchant_risk",
    ),
    (
        "NaN",
        "/predict",
        json.dumps(
            {**REQUEST, "features": {**REQUEST["features"], "amount": float("nan")}}
        ).encode(),
        400,
        None,
    ),
    (
        "Infinity",
        "/predict",
        json.dumps(
            {**REQUEST, "features": {**REQUEST["features"], "amount": float("inf")}}
        ).encode(),
        400,
        None,
    ),
    ("oversized body", "/predict", BIG, 413, None),
    ("too many batch rows", "/predict_batch", {"instances": [REQUEST] * 257}, 413, "instances"),
    ("empty batch", "/predict_batch", {"instances": []}, 400, "instances"),
    (
        "batch row with a bad feature",
        "/predict_batch",
        {"instances": [REQUEST, {**REQUEST, "features": {**REQUEST["features"], "amount": None}}]},
        400,
        "instances[1].features.amount",
    ),
    ("v2 unknown model", "/v2/models/nope/infer", {"inputs": []}, 404, "name"),
    ("v2 missing inputs", "/v2/models/fraud/infer", {"inputs": []}, 400, None),
    (
        "v2 non-numeric data",
        "/v2/models/fraud/infer",
        {"inputs": [{"name": "amount", "data": ["a"]}]},
        400,
        "inputs[0].data",
    ),
    ("unknown route", "/nope", {}, 404, None),
]


@pytest.mark.parametrize(
    ("case", "path", "payload", "status", "field"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_answered_with_status_and_field(
    runtime: RuntimeProcess, case: str, path: str, payload: Any, status: int, field: str | None
) -> None:
    got, body, _ = runtime.post(path, payload)
    assert got == status, (case, body)
    assert set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["message"]
    if field is not None:
        assert body["error"]["field"] == field
    # ...and the process keeps serving.
    assert runtime.post("/predict", REQUEST)[0] == 200


def test_metrics_use_the_documented_names_and_labels(runtime: RuntimeProcess) -> None:
    runtime.post("/predict", REQUEST)
    labels = {"model": "fraud", "version": "v1", "variant": "champion"}
    assert (runtime.metric("rtml_requests_total", outcome="ok", **labels) or 0) >= 1
    assert runtime.metric("rtml_request_duration_seconds_count", **labels)
    assert runtime.metric("rtml_feature_read_duration_seconds_count", **labels) is not None
    assert runtime.metric("rtml_circuit_breaker_state", dependency="features", **labels) == 0
    assert runtime.metric("rtml_inflight_requests", **labels) == 0
    assert runtime.metric("rtml_prediction_score_count", **labels)
    assert runtime.metric("rtml_feature_cache_hits_total", **labels) is not None
    assert runtime.metric("rtml_build_info", version="0.1.0") == 1
    assert (runtime.metric("process_resident_memory_bytes") or 0) > 0


def test_redis_outage_opens_the_breaker_serves_fallbacks_and_recovers(
    fraud_build: Path, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path)
    redis.start()
    manifest = write_manifest(
        fraud_build, tmp_path / "outage", slo=OUTAGE_SLO, circuitBreaker=BREAKER
    )
    proc = RuntimeProcess(manifest, redis.url, env={"RTML_CACHE_ENTRIES": "0"})
    budget_ms = OUTAGE_SLO["featureBudgetMs"]
    try:
        proc.start()
        assert proc.post("/predict", REQUEST)[1]["degraded"] is False
        redis.pause()  # connections now hang: every read must be cut off at featureBudgetMs

        def call(_: int) -> tuple[int, dict[str, Any], float]:
            start = time.perf_counter()
            status, body, _h = proc.post("/predict", REQUEST)
            return status, body, time.perf_counter() - start

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(call, range(60)))
        # A read that hangs for good still gets an answer, and a 200 (not the 504 of the 5 s
        # timeout): each read was cut off and the fallback answered.
        assert all(s == 200 for s, _, _ in results), [s for s, _, _ in results]
        assert all(b["degraded"] for _, b, _ in results)
        # Cut off at the budget, not before: the reads that were tried (until the breaker
        # opened, at least minimumCalls of them) each waited featureBudgetMs; once it was open
        # the read was skipped, and those answers came sooner than the budget.
        waited = [b["latency_ms"] for _, b, _ in results if b["latency_ms"] >= budget_ms - 1]
        skipped = [b["latency_ms"] for _, b, _ in results if b["latency_ms"] < budget_ms - 1]
        assert len(waited) >= BREAKER["minimumCalls"], sorted(
            b["latency_ms"] for _, b, _ in results
        )
        assert skipped, "the breaker never opened: every read waited the budget"
        labels = {"model": "fraud", "version": "v1", "variant": "champion"}
        assert proc.metric("rtml_circuit_breaker_state", dependency="features", **labels) == 1
        assert (proc.metric("rtml_requests_total", outcome="fallback", **labels) or 0) >= 60

        redis.resume()
        # After openDuration (2 s) a few half-open probes succeed and close it. Polled, not
        # slept for: on a slow machine the breaker may have re-opened late in the run above.
        deadline = time.monotonic() + 15
        answers: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            answers.append(proc.post("/predict", REQUEST)[1])
            state = proc.metric("rtml_circuit_breaker_state", dependency="features", **labels)
            if not answers[-1]["degraded"] and state == 0:
                break
            time.sleep(0.2)
        assert answers[-1]["degraded"] is False, answers[-3:]
        assert proc.metric("rtml_circuit_breaker_state", dependency="features", **labels) == 0
    finally:
        proc.stop()
        redis.stop()


def test_wrong_digest_never_becomes_ready(
    fraud_build: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    manifest = write_manifest(fraud_build, tmp_path / "digest")
    text = manifest.read_text()
    digest = (fraud_build / "model.onnx.sha256").read_text().split()[0]
    manifest.write_text(text.replace(digest, "f" * 64))
    proc = RuntimeProcess(manifest, redis_server.url)
    try:
        proc.start(wait_ready=False)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            status, body = proc.get("/v2/health/ready")
            assert status == 503, body
            time.sleep(0.5)
        assert "sha256" in body["reason"]
        assert proc.post("/predict", REQUEST)[0] == 503
        assert proc.get("/v2/health/live")[0] == 200
    finally:
        proc.stop()
    assert "sha256" in proc.log_path.read_text()


def test_rate_limit_answers_429_at_the_configured_rate(
    fraud_build: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    manifest = write_manifest(
        fraud_build, tmp_path / "limited", rateLimit={"requestsPerSecond": 20, "burst": 5}
    )
    proc = RuntimeProcess(manifest, redis_server.url)
    try:
        proc.start()
        time.sleep(0.5)  # let the bucket refill after warm-up checks
        statuses: list[int] = []
        retry_after: set[str] = set()
        start = time.monotonic()
        while time.monotonic() - start < 3.0:
            status, _, headers = proc.post("/predict", REQUEST)
            statuses.append(status)
            if status == 429:
                retry_after.add(headers.get("Retry-After", headers.get("retry-after", "")))
        elapsed = time.monotonic() - start
        ok = statuses.count(200)
        expected = 5 + 20 * elapsed
        assert 0.8 * expected <= ok <= 1.2 * expected + 2, (ok, expected)
        assert statuses.count(429) > 0
        assert retry_after
        assert "" not in retry_after
    finally:
        proc.stop()
