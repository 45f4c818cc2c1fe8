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
SLO = {"p99LatencyMs": 20, "timeoutMs": 50, "featureBudgetMs": 10}


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
    assert body["latency_ms"] < SLO["timeoutMs"]


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
    ("too many batch rows", "/predict_batch", {"instances": [REQUEST] * 257}, 400, "instances"),
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
    manifest = write_manifest(fraud_build, tmp_path / "outage", slo=SLO, circuitBreaker=BREAKER)
    proc = RuntimeProcess(manifest, redis.url, env={"RTML_CACHE_ENTRIES": "0"})
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
        assert all(s == 200 for s, _, _ in results), [s for s, _, _ in results]
        assert all(b["degraded"] for _, b, _ in results)
        assert max(b["latency_ms"] for _, b, _ in results) < SLO["timeoutMs"]
        assert max(t for _, _, t in results) < 2.0  # no request hangs
        labels = {"model": "fraud", "version": "v1", "variant": "champion"}
        assert proc.metric("rtml_circuit_breaker_state", dependency="features", **labels) == 1
        assert (proc.metric("rtml_requests_total", outcome="fallback", **labels) or 0) >= 60

        redis.resume()
        time.sleep(2.2)  # openDuration: the next calls are half-open probes
        answers = [proc.post("/predict", REQUEST)[1] for _ in range(5)]
        assert answers[-1]["degraded"] is False
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
