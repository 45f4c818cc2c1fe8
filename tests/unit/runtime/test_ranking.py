"""The ranking form of /predict_batch: a real ONNX Runtime session (score = sigmoid(a + b +
amount)) and a scripted feature reader that counts its reads."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from rtml.api.model import Model
from rtml.contract import RuntimeSettings
from rtml_runtime.config import RuntimeConfig
from rtml_runtime.engine import Runtime
from rtml_runtime.errors import RequestError
from rtml_runtime.onnx_model import OnnxModel
from rtml_runtime.ranking import Filter, ranked
from tests.clock import FakeClock
from tests.unit.runtime.onnx_fixtures import write_sum_model
from tests.unit.runtime.test_engine import VIEW, DictReader, digest
from tests.unit.runtime.test_experiments import ENTITIES, candidate_score, champion_score, plan

pytestmark = pytest.mark.unit


class CallCounter:
    """Counts the ONNX Runtime session's runs (the real session still runs each one)."""

    def __init__(self, model: OnnxModel) -> None:
        self.calls = 0
        for name in ("run", "run_with_iobinding"):
            setattr(model.session, name, self._counted(getattr(model.session, name)))

    def _counted(self, method: Any) -> Any:
        def call(*args: Any) -> Any:
            self.calls += 1
            return method(*args)

        return call


def make_runtime(
    tmp_path: Path, clock: FakeClock | None = None, ttl_s: float = 0.0, **spec: Any
) -> tuple[Runtime, DictReader, CallCounter]:
    path = write_sum_model(tmp_path / "m.onnx", ["a", "b", "amount"])
    body: dict[str, Any] = {
        "version": "v1",
        "artifact": {"uri": f"file://{path}", "sha256": digest(path)},
        "features": {"featureViewRef": "cards", "requestFeatures": ["amount"]},
        "warmup": {"requests": 3},
        **spec,
    }
    config = RuntimeConfig(
        model=Model.model_validate({"metadata": {"name": "fraud"}, "spec": body}),
        feature_view=VIEW,
        base_dir=tmp_path,
        settings=RuntimeSettings.model_construct(
            cache_entries=0,
            artifact_dir=tmp_path / "art",
            max_batch_rows=500,
            rank_cache_ttl_seconds=ttl_s,
            rank_cache_entries=4,
        ),
    )
    runtime = Runtime(config, clock=clock or FakeClock())
    reader = DictReader({"c1": {"a": 1.0, "b": 2.0}})
    asyncio.run(runtime.start(reader))
    assert runtime.ready, runtime.not_ready_reason
    reader.calls = 0  # the warm-up's reads
    assert runtime.model is not None
    return runtime, reader, CallCounter(runtime.model)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def candidates(amounts: list[float]) -> list[dict[str, Any]]:
    return [{"id": f"item-{i}", "features": {"amount": a}} for i, a in enumerate(amounts)]


def rank(rt: Runtime, **body: Any) -> dict[str, Any]:
    return asyncio.run(rt.predict_batch({"card_id": "c1", **body}))


def test_one_read_and_one_model_call_score_every_candidate(tmp_path: Path) -> None:
    rt, reader, model = make_runtime(tmp_path)
    amounts = [(i % 17) / 4 - 2 for i in range(500)]
    out = rank(rt, instances=candidates(amounts))
    assert (reader.calls, model.calls) == (1, 1)
    assert out["candidates"] == out["scored"] == 500
    assert [p["id"] for p in out["predictions"]] == [f"item-{i}" for i in range(500)]
    assert [p["index"] for p in out["predictions"]] == list(range(500))
    assert "rank" not in out["predictions"][0]
    for p, amount in zip(out["predictions"], amounts, strict=True):
        assert p["score"] == pytest.approx(sigmoid(3.0 + amount), rel=1e-6)
        assert p["degraded"] is False
    assert (out["version"], out["variant"], out["cached"]) == ("v1", "champion", False)


def test_ranking_agrees_with_single_predictions(tmp_path: Path) -> None:
    rt, _, _ = make_runtime(tmp_path)
    amounts = [0.25, -1.5, 3.0, 0.0, 7.5]
    out = rank(rt, instances=candidates(amounts))
    for p, amount in zip(out["predictions"], amounts, strict=True):
        single = asyncio.run(rt.predict({"card_id": "c1", "features": {"amount": amount}}))
        assert p["score"] == pytest.approx(single["score"], abs=1e-6)


def test_top_k_orders_by_score_and_ranks_from_one(tmp_path: Path) -> None:
    rt, _, _ = make_runtime(tmp_path)
    out = rank(rt, instances=candidates([0.5, 4.0, -2.0, 2.0, 1.0]), topK=3)
    assert [(p["id"], p["rank"], p["index"]) for p in out["predictions"]] == [
        ("item-1", 1, 1),
        ("item-3", 2, 3),
        ("item-4", 3, 4),
    ]
    scores = [p["score"] for p in out["predictions"]]
    assert scores == sorted(scores, reverse=True)
    assert out["scored"] == 5  # all scored, three returned


def test_top_k_over_the_candidates_returns_them_all_ranked(tmp_path: Path) -> None:
    rt, _, _ = make_runtime(tmp_path)
    out = rank(rt, instances=[{"features": {"amount": 1.0}}, {"features": {"amount": 2.0}}], topK=9)
    assert [(p["index"], p["rank"]) for p in out["predictions"]] == [(1, 1), (0, 2)]
    assert "id" not in out["predictions"][0]  # none given


def test_ties_keep_instance_order_and_nan_goes_last() -> None:
    assert ranked([0.5, 0.9, 0.5, math.nan, 0.9], 5) == [1, 4, 0, 2, 3]
    assert ranked([0.5, 0.9], None) == [0, 1]


def test_filters_drop_candidates_before_scoring(tmp_path: Path) -> None:
    rt, _, _ = make_runtime(tmp_path)
    amounts = [5.0, 50.0, 150.0, 100.0, 7.0]
    filters = [{"feature": "amount", "max": 100}, {"feature": "amount", "min": 6}]
    out = rank(rt, instances=candidates(amounts), filters=filters)
    assert [p["id"] for p in out["predictions"]] == ["item-1", "item-3", "item-4"]
    assert (out["candidates"], out["scored"]) == (5, 3)
    # A filter on a stored feature (b is 2.0 for c1) keeps all or none.
    kept = rank(rt, instances=candidates(amounts), filters=[{"feature": "b", "equals": 2}])
    assert kept["scored"] == 5
    none = rank(rt, instances=candidates(amounts), filters=[{"feature": "b", "in": [1, 3]}])
    assert (none["scored"], none["predictions"]) == (0, [])


def test_a_filter_fails_a_missing_or_nan_value() -> None:
    f = Filter("price", max=100.0)
    assert f.keeps({"price": 99})
    assert not f.keeps({"price": 101})
    assert not f.keeps({})
    assert not f.keeps({"price": math.nan})
    assert Filter("in_stock", within=frozenset({1.0})).keeps({"in_stock": True})


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"topK": 0}, "topK"),
        ({"topK": "10"}, "topK"),
        ({"topK": True}, "topK"),
        ({"filters": {"feature": "amount"}}, "filters"),
        (
            {"filters": [{"feature": "amount", "max": 1}, {"feature": "amount", "max": "x"}]},
            "filters[1].max",
        ),
        ({"filters": [{"feature": "price", "max": 1}]}, "filters[0].feature"),
        ({"filters": [{"feature": "amount"}]}, "filters[0]"),
        ({"filters": [{"feature": "amount", "below": 1}]}, "filters[0].below"),
        ({"filters": [{"feature": "amount", "in": []}]}, "filters[0].in"),
        ({"filters": [{"feature": "amount", "in": [1, None]}]}, "filters[0].in[1]"),
        ({"filters": [{"feature": "amount", "min": float("inf")}]}, "filters[0].min"),
        ({"card_id": ["c1"]}, "card_id"),
    ],
)
def test_bad_ranking_requests_name_the_field(
    tmp_path: Path, extra: dict[str, Any], field: str
) -> None:
    rt, reader, _ = make_runtime(tmp_path)
    with pytest.raises(RequestError) as err:
        rank(rt, instances=candidates([1.0]), **extra)
    assert (err.value.status, err.value.field) == (400, field)
    assert reader.calls == 0  # refused before the store is asked


@pytest.mark.parametrize(
    ("instances", "field"),
    [
        (
            [{"id": "a", "features": {"amount": 1}}, {"features": {"amount": "x"}}],
            "instances[1].features.amount",
        ),
        ([{"id": "a", "features": {}}], "instances[0].features.amount"),
        ([{"id": ["a"], "features": {"amount": 1}}], "instances[0].id"),
        ([{"card_id": "c2", "features": {"amount": 1}}], "instances[0].card_id"),
        (["a"], "instances[0]"),
    ],
)
def test_bad_candidates_name_the_field(tmp_path: Path, instances: list[Any], field: str) -> None:
    rt, _, _ = make_runtime(tmp_path)
    with pytest.raises(RequestError) as err:
        rank(rt, instances=instances)
    assert (err.value.status, err.value.field) == (400, field)


def test_top_k_without_the_entity_is_a_ranking_request_missing_it(tmp_path: Path) -> None:
    rt, _, _ = make_runtime(tmp_path)
    with pytest.raises(RequestError) as err:
        asyncio.run(rt.predict_batch({"instances": candidates([1.0]), "topK": 1}))
    assert (err.value.status, err.value.field) == (400, "card_id")


def test_over_the_row_limit_is_a_413(tmp_path: Path) -> None:
    rt, reader, _ = make_runtime(tmp_path)
    with pytest.raises(RequestError) as err:
        rank(rt, instances=candidates([1.0] * 501))
    assert (err.value.status, err.value.code, err.value.field) == (
        413,
        "too_many_rows",
        "instances",
    )
    assert reader.calls == 0


def test_the_batch_form_is_unchanged_without_a_top_level_entity(tmp_path: Path) -> None:
    rt, reader, model = make_runtime(tmp_path)
    rows = [{"card_id": "c1", "features": {"amount": a}} for a in (1.0, 2.0, 3.0)]
    out = asyncio.run(rt.predict_batch({"instances": rows}))
    assert (reader.calls, model.calls) == (3, 3)  # one read and one call per row, as before
    assert set(out["predictions"][0]) == {"score", "degraded", "version", "variant"}
    assert "cached" not in out


def test_cache_answers_the_same_body_within_the_ttl(tmp_path: Path) -> None:
    clock = FakeClock()
    rt, reader, model = make_runtime(tmp_path, clock, ttl_s=5.0)
    body = {"instances": candidates([1.0, 2.0]), "topK": 1}
    first = rank(rt, **body)
    assert first["cached"] is False
    clock.advance(4.9)
    # The same body with its keys in another order is the same request.
    again = asyncio.run(rt.predict_batch({"topK": 1, **body, "card_id": "c1"}))
    assert again["cached"] is True
    assert again["predictions"] == first["predictions"]
    assert (reader.calls, model.calls) == (1, 1)
    assert rt.m.outcomes["ok"]._value.get() == 3  # 2 scored + 1 returned from the cache
    other = rank(rt, instances=candidates([1.0, 2.0]), topK=2)  # another body: a miss
    assert other["cached"] is False
    clock.advance(0.1)
    expired = rank(rt, **body)
    assert expired["cached"] is False
    assert (reader.calls, model.calls) == (3, 3)


def test_no_cache_by_default(tmp_path: Path) -> None:
    rt, reader, _ = make_runtime(tmp_path)
    body = {"instances": candidates([1.0])}
    assert rank(rt, **body)["cached"] is False
    assert rank(rt, **body)["cached"] is False
    assert reader.calls == 2


def test_unknown_entity_scores_with_defaults_and_is_degraded(tmp_path: Path) -> None:
    rt, reader, model = make_runtime(tmp_path, ttl_s=5.0)
    body = {"card_id": "nobody", "instances": candidates([1.0, 2.0])}
    out = asyncio.run(rt.predict_batch(body))
    assert [p["score"] for p in out["predictions"]] == pytest.approx(
        [sigmoid(0.0 + 1.0 + 1.0), sigmoid(0.0 + 1.0 + 2.0)], rel=1e-6
    )
    assert all(p["degraded"] for p in out["predictions"])
    assert asyncio.run(rt.predict_batch(body))["cached"] is False  # degraded: not kept
    assert (reader.calls, model.calls) == (2, 2)


def test_a_failed_read_follows_spec_fallback_for_every_row(tmp_path: Path) -> None:
    rt, reader, model = make_runtime(tmp_path, fallback={"mode": "static", "value": 0.25})
    reader.fail = True
    out = rank(rt, instances=candidates([1.0, 2.0, 3.0]), topK=2)
    assert [(p["score"], p["degraded"], p["rank"]) for p in out["predictions"]] == [
        (0.25, True, 1),
        (0.25, True, 2),
    ]
    assert (reader.calls, model.calls) == (1, 0)
    assert rt.m.outcomes["fallback"]._value.get() == 3


def test_a_failed_read_with_default_features_scores_the_defaults(tmp_path: Path) -> None:
    rt, reader, _ = make_runtime(tmp_path, fallback={"mode": "defaultFeatures"})
    reader.fail = True
    out = rank(rt, instances=candidates([1.0, 2.0]))
    assert [p["score"] for p in out["predictions"]] == pytest.approx(
        [sigmoid(2.0), sigmoid(3.0)], rel=1e-6
    )
    assert all(p["degraded"] for p in out["predictions"])


def test_a_failed_read_without_a_fallback_is_a_503(tmp_path: Path) -> None:
    rt, reader, _ = make_runtime(tmp_path, fallback={"mode": "reject"})
    reader.fail = True
    with pytest.raises(RequestError) as err:
        rank(rt, instances=candidates([1.0]))
    assert (err.value.status, err.value.code) == (503, "features_unavailable")


def test_one_variant_answers_by_the_entity_sticky_key(tmp_path: Path) -> None:
    rt, _, _ = make_runtime(tmp_path)
    asyncio.run(rt.plans.apply(plan(tmp_path, weight=50)))
    amounts = [0.5, -1.0, 2.0]
    seen = set()
    for entity in ENTITIES[:20]:
        body = {"card_id": entity, "instances": candidates(amounts)}
        out = asyncio.run(rt.predict_batch(body))
        single = asyncio.run(rt.predict({"card_id": entity, "features": {"amount": 0.5}}))
        assert (out["variant"], out["version"]) == (single["variant"], single["version"])
        expected = candidate_score if out["variant"] == "candidate" else champion_score
        assert [p["score"] for p in out["predictions"]] == pytest.approx(
            [expected(a) for a in amounts], rel=1e-6
        )
        seen.add(out["variant"])
    assert seen == {"champion", "candidate"}
