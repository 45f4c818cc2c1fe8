"""Ranking through a real `rtml serve` process reading the fraud example's features from Redis:
one call for 500 candidates answers what 500 single /predict calls answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.runtime_proc import REPO, RedisServer, RuntimeProcess, write_manifest

pytestmark = [pytest.mark.runtime, pytest.mark.redis, pytest.mark.feast]
REQUEST = json.loads((REPO / "examples/fraud/request.json").read_text())
ENTITY = REQUEST["entity_id"]
SLO = {"p99LatencyMs": 50, "timeoutMs": 5000, "featureBudgetMs": 1000}


@pytest.fixture(scope="module")
def runtime(
    fraud_build: Path, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeProcess]:
    manifest = write_manifest(fraud_build, tmp_path_factory.mktemp("ranking"), slo=SLO)
    env = {"RTML_MAX_BATCH_ROWS": "500", "RTML_RANK_CACHE_TTL_SECONDS": "60"}
    proc = RuntimeProcess(manifest, redis_server.url, env=env)
    proc.start()
    yield proc
    proc.stop()


def candidate(i: int) -> dict[str, Any]:
    features = {
        "amount": round(5 + (i * 37) % 900 + i / 1000, 3),
        "merchant_risk": round((i * 13 % 100) / 100, 2),
        "hour_of_day": i % 24,
    }
    return {"id": f"item-{i}", "features": features}


def test_500_candidates_in_one_call_agree_with_500_single_calls(runtime: RuntimeProcess) -> None:
    instances = [candidate(i) for i in range(500)]
    status, body, _ = runtime.post("/predict_batch", {"entity_id": ENTITY, "instances": instances})
    assert status == 200, body
    assert (body["candidates"], body["scored"], body["cached"]) == (500, 500, False)
    ranked = body["predictions"]
    assert [p["id"] for p in ranked] == [c["id"] for c in instances]
    assert not any(p["degraded"] for p in ranked)  # the entity was materialised into Redis
    for c, p in zip(instances, ranked, strict=True):
        status, single, _ = runtime.post(
            "/predict", {"entity_id": ENTITY, "features": c["features"]}
        )
        assert status == 200, single
        assert single["degraded"] is False
        assert p["score"] == pytest.approx(single["score"], abs=1e-6), c["id"]


def test_top_k_filters_and_the_cache_over_http(runtime: RuntimeProcess) -> None:
    body = {
        "entity_id": ENTITY,
        "instances": [candidate(i) for i in range(100)],
        "topK": 10,
        "filters": [{"feature": "amount", "max": 500}, {"feature": "hour_of_day", "min": 6}],
    }
    status, out, _ = runtime.post("/predict_batch", body)
    assert status == 200, out
    kept = [
        c
        for c in body["instances"]
        if c["features"]["amount"] <= 500 and c["features"]["hour_of_day"] >= 6
    ]
    assert out["scored"] == len(kept)
    assert [p["rank"] for p in out["predictions"]] == list(range(1, 11))
    scores = [p["score"] for p in out["predictions"]]
    assert scores == sorted(scores, reverse=True)
    assert {p["id"] for p in out["predictions"]} <= {c["id"] for c in kept}
    status, again, _ = runtime.post("/predict_batch", body)
    assert (status, again["cached"], again["predictions"]) == (200, True, out["predictions"])


def test_a_bad_filter_is_a_400_naming_the_field(runtime: RuntimeProcess) -> None:
    body = {
        "entity_id": ENTITY,
        "instances": [candidate(0)],
        "filters": [{"feature": "amount", "max": 1}, {"feature": "amount", "max": "cheap"}],
    }
    status, out, _ = runtime.post("/predict_batch", body)
    assert status == 400
    assert out["error"]["field"] == "filters[1].max"


def test_over_500_candidates_is_a_413(runtime: RuntimeProcess) -> None:
    body = {"entity_id": ENTITY, "instances": [candidate(i) for i in range(501)]}
    status, out, _ = runtime.post("/predict_batch", body)
    assert (status, out["error"]["code"]) == (413, "too_many_rows")
