"""examples/ranking end to end (issue 13, item 4): its build runs; the LightGBM ranker that
onnxmltools exported, unedited (one [N, 9] input, no rtml metadata), serves through
spec.features.columns from a real `rtml serve --profile redis`; one 500-candidate ranking call
answers what 500 single /predict calls and LightGBM's own `predict` answer, and topK keeps the K
best in order."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx
import pandas as pd
import pytest
import yaml

from rtml.api.featureview import FeatureView
from rtml.api.signature import check_signature
from rtml.onnx_inputs import onnx_graph
from tests.runtime_proc import REPO, RedisServer, RuntimeProcess

EXAMPLE = REPO / "examples/ranking"
DOCS = {d["kind"]: d for d in yaml.safe_load_all((EXAMPLE / "model.yaml").read_text())}
FEATURES = DOCS["Model"]["spec"]["features"]
COLUMNS: list[str] = FEATURES["columns"]
ITEM_FEATURES: list[str] = FEATURES["requestFeatures"]
USER = "user_00007"
N = 500


@pytest.fixture(scope="module")
def ranking_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example built as its README builds it."""
    out = tmp_path_factory.mktemp("ranking-build")
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "build.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def manifest(build: Path, where: Path) -> Path:
    """The example's model.yaml pointed at `build`, its artifact pinned to build.py's digest."""
    docs = [json.loads(json.dumps(d)) for d in DOCS.values()]
    for d in docs:
        if d["kind"] == "FeatureView":
            d["spec"]["source"]["path"] = f"file://{build / 'users.parquet'}"
        if d["kind"] == "Model":
            d["spec"]["artifact"] = {
                "uri": f"file://{build / 'model.onnx'}",
                "sha256": (build / "model.onnx.sha256").read_text().split()[0],
            }
            d["spec"]["slo"] = {"p99LatencyMs": 50, "timeoutMs": 5000, "featureBudgetMs": 1000}
    where.mkdir(parents=True, exist_ok=True)
    path = where / "model.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def runtime(
    ranking_build: Path, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeProcess]:
    path = manifest(ranking_build, tmp_path_factory.mktemp("ranking-example"))
    proc = RuntimeProcess(path, redis_server.url, env={"RTML_MAX_BATCH_ROWS": str(N)})
    proc.start()
    yield proc
    proc.stop()


def candidates(build: Path, n: int) -> list[dict[str, Any]]:
    """N catalogue items as ranking instances, their features as JSON numbers."""
    items = pd.read_parquet(build / "items.parquet").iloc[:n]
    features = items[ITEM_FEATURES].to_dict("records")  # Python ints and floats
    return [{"id": i, "features": f} for i, f in zip(items["item_id"], features, strict=True)]


def lightgbm_scores(build: Path, user: str, instances: list[dict[str, Any]]) -> np.ndarray:
    """LightGBM's own `predict` (ranker.txt) on the rows the runtime builds: the user's stored
    features and each item's, in spec.features.columns order, as float32."""
    users = pd.read_parquet(build / "users.parquet").set_index("user_id")
    stored = users.loc[user]
    rows = [
        [stored[c] if c in users.columns else i["features"][c] for c in COLUMNS] for i in instances
    ]
    booster = lgb.Booster(model_file=str(build / "ranker.txt"))
    return np.asarray(booster.predict(np.asarray(rows, dtype=np.float32)))


@pytest.mark.unit
def test_the_export_is_as_onnxmltools_writes_it(ranking_build: Path) -> None:
    """One float [N, 9] input, no metadata at all: what only spec.features.columns can name."""
    model = onnx.load(str(ranking_build / "model.onnx"))
    assert model.producer_name == "OnnxMLTools"
    assert list(model.metadata_props) == []
    graph = onnx_graph(ranking_build / "model.onnx")
    assert graph.declared is None  # no rtml.features
    assert [(i.dtype, i.shape) for i in graph.inputs] == [("tensor(float)", (None, len(COLUMNS)))]
    assert [(o.name, o.shape) for o in graph.outputs] == [("variable", (None, 1))]
    view = FeatureView.model_validate(DOCS["FeatureView"])
    without = check_signature(graph.inputs, view, ITEM_FEATURES, graph.declared)
    assert [m.reason for m in without] == ["UndeclaredColumns"]
    with_columns = check_signature(
        graph.inputs, view, ITEM_FEATURES, graph.declared, COLUMNS, graph.outputs
    )
    assert with_columns == []
    digest = hashlib.sha256((ranking_build / "model.onnx").read_bytes()).hexdigest()
    assert (ranking_build / "model.onnx.sha256").read_text().split()[0] == digest


@pytest.mark.runtime
@pytest.mark.redis
@pytest.mark.feast
def test_500_candidates_agree_with_500_single_calls_and_lightgbm(
    runtime: RuntimeProcess, ranking_build: Path
) -> None:
    instances = candidates(ranking_build, N)
    status, body, _ = runtime.post("/predict_batch", {"user_id": USER, "instances": instances})
    assert status == 200, body
    assert (body["candidates"], body["scored"], body["model"]) == (N, N, "ranker")
    ranked = body["predictions"]
    assert [p["id"] for p in ranked] == [i["id"] for i in instances]
    assert not any(p["degraded"] for p in ranked)  # the user was materialised into Redis
    expected = lightgbm_scores(ranking_build, USER, instances)
    assert len(set(expected.round(6))) > N // 2  # distinct scores: a real ranking to check
    assert [p["score"] for p in ranked] == pytest.approx(expected.tolist(), abs=1e-5)
    for i, p in zip(instances, ranked, strict=True):
        status, single, _ = runtime.post("/predict", {"user_id": USER, "features": i["features"]})
        assert (status, single["degraded"]) == (200, False), single
        assert p["score"] == pytest.approx(single["score"], abs=1e-5), i["id"]


@pytest.mark.runtime
@pytest.mark.redis
@pytest.mark.feast
def test_top_k_with_a_filter_returns_the_k_best_in_order(
    runtime: RuntimeProcess, ranking_build: Path
) -> None:
    instances = candidates(ranking_build, N)
    k, max_price = 20, 25.0
    body = {
        "user_id": USER,
        "instances": instances,
        "topK": k,
        "filters": [{"feature": "item_price", "max": max_price}],
    }
    status, unranked, _ = runtime.post("/predict_batch", {"user_id": USER, "instances": instances})
    assert status == 200, unranked
    scores = [p["score"] for p in unranked["predictions"]]
    status, out, _ = runtime.post("/predict_batch", body)
    assert status == 200, out
    kept = [j for j, i in enumerate(instances) if i["features"]["item_price"] <= max_price]
    assert k < len(kept) < N
    best = sorted(kept, key=lambda j: -scores[j])[:k]  # stable: ties keep instance order
    assert out["scored"] == len(kept)
    assert [p["rank"] for p in out["predictions"]] == list(range(1, k + 1))
    assert [p["index"] for p in out["predictions"]] == best
    assert [p["id"] for p in out["predictions"]] == [instances[j]["id"] for j in best]
    assert [p["score"] for p in out["predictions"]] == [scores[j] for j in best]
    lightgbm = lightgbm_scores(ranking_build, USER, [instances[j] for j in best])
    assert [p["score"] for p in out["predictions"]] == pytest.approx(lightgbm.tolist(), abs=1e-5)


@pytest.mark.runtime
@pytest.mark.redis
@pytest.mark.feast
def test_the_request_file_build_wrote_is_answered(
    runtime: RuntimeProcess, ranking_build: Path
) -> None:
    request = json.loads((ranking_build / "request.json").read_text())
    status, out, _ = runtime.post("/predict_batch", request)
    assert status == 200, out
    assert [p["rank"] for p in out["predictions"]] == list(range(1, request["topK"] + 1))
    given = {i["id"]: i["features"] for i in request["instances"]}
    assert all(given[p["id"]]["item_age_days"] <= 365 for p in out["predictions"])
