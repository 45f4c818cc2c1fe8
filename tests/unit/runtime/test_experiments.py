"""Two variants in one runtime: real ONNX models, the plan switch, shadow scoring."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from rtml.api.traffic import CHAMPION_ONLY, TrafficPlan, with_revision
from rtml_runtime.engine import Runtime
from rtml_runtime.v2codec import from_json
from tests.unit.runtime.onnx_fixtures import write_sum_model
from tests.unit.runtime.test_engine import make_runtime, sigmoid

pytestmark = pytest.mark.unit
ENTITIES = [f"e{i}" for i in range(400)]  # unknown to the reader: view defaults a=0, b=1


def champion_score(amount: float) -> float:
    return sigmoid(0 + 1 + amount)


def candidate_score(amount: float) -> float:
    return sigmoid(amount)  # the candidate reads only `amount`: a different score


def plan(tmp_path: Path, strategy: str = "canary", weight: int = 50, **extra: Any) -> TrafficPlan:
    path = tmp_path / "candidate.onnx"
    if not path.exists():
        write_sum_model(path, ["amount"])
    body: dict[str, Any] = {
        "experiment": "fraud-v2",
        "strategy": strategy,
        "candidate": {
            "version": "v2",
            "artifact": {
                "uri": f"file://{path}",
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            },
        },
        "weight": 0 if strategy == "shadow" else weight,
        "shadowSampleRate": weight if strategy == "shadow" else 0,
        **extra,
    }
    return with_revision(TrafficPlan.model_validate(body))


def predict(rt: Runtime, entity: str, amount: float = 0.5) -> dict[str, Any]:
    return asyncio.run(rt.predict({"card_id": entity, "features": {"amount": amount}}))


def sample(rt: Runtime, name: str, **labels: str) -> float:
    return rt.metrics.registry.get_sample_value(name, labels) or 0.0


def weight_gauge(rt: Runtime, experiment: str, revision: str) -> float | None:
    return rt.metrics.registry.get_sample_value(
        "rtml_candidate_weight",
        {"model": "fraud", "experiment": experiment, "revision": revision},
    )


def counting_loads(rt: Runtime) -> list[str]:
    loads: list[str] = []
    original = rt.plans.load_model

    def load(candidate: Any) -> Any:
        loads.append(candidate.version)
        return original(candidate)

    rt.plans.load_model = load
    return loads


def test_each_variant_answers_with_its_own_model_and_metrics(tmp_path: Path) -> None:
    rt, _ = make_runtime(tmp_path)
    p = plan(tmp_path, weight=50)
    assert asyncio.run(rt.plans.apply(p)) is True
    answers = {e: predict(rt, e) for e in ENTITIES}
    by = {v: [a for a in answers.values() if a["variant"] == v] for v in ("champion", "candidate")}
    assert 150 < len(by["candidate"]) < 250
    for a in by["champion"]:
        assert (a["version"], a["score"]) == ("v1", pytest.approx(champion_score(0.5)))
    for a in by["candidate"]:
        assert (a["version"], a["score"]) == ("v2", pytest.approx(candidate_score(0.5)))
    for variant, version in (("champion", "v1"), ("candidate", "v2")):
        labels = {"model": "fraud", "version": version, "variant": variant}
        # Unknown entities: answered with the view's defaults, so counted as fallbacks.
        assert sample(rt, "rtml_requests_total", **labels, outcome="fallback") == len(by[variant])
        # The one feature read of a request is counted on the variant that answered it.
        assert sample(rt, "rtml_feature_cache_misses_total", **labels) == len(by[variant])
        assert sample(rt, "rtml_request_duration_seconds_count", **labels) == len(by[variant])
        assert sample(rt, "rtml_circuit_breaker_state", **labels, dependency="model") == 0
    assert weight_gauge(rt, "fraud-v2", p.revision) == 50
    assert weight_gauge(rt, "", "") is None  # only the plan in effect is exported
    # Sticky: the same entity, the same variant.
    assert all(predict(rt, e)["variant"] == answers[e]["variant"] for e in ENTITIES[:50])


def test_batch_rows_and_v2_are_routed(tmp_path: Path) -> None:
    rt, _ = make_runtime(tmp_path)
    asyncio.run(rt.plans.apply(plan(tmp_path, weight=50)))
    rows = [{"card_id": e, "features": {"amount": 0.0}} for e in ENTITIES[:40]]
    out = asyncio.run(rt.predict_batch({"instances": rows}))
    assert out["variant"] == "mixed"
    for row, p in zip(rows, out["predictions"], strict=True):
        assert p["variant"] == predict(rt, str(row["card_id"]), 0.0)["variant"]
    inputs = [
        {"name": n, "shape": [1, 1], "datatype": "FP32", "data": [1.0]}
        for n in ("a", "b", "amount")
    ]
    seen = {
        asyncio.run(rt.infer_v2("fraud", from_json({"inputs": inputs})))["parameters"]["variant"]
        for _ in range(60)
    }
    assert seen == {"champion", "candidate"}  # a random draw per request


def test_a_weight_change_keeps_the_loaded_candidate(tmp_path: Path) -> None:
    rt, _ = make_runtime(tmp_path)
    loads = counting_loads(rt)
    first = plan(tmp_path, weight=10)
    asyncio.run(rt.plans.apply(first))
    variant = rt.plans.active.candidate
    candidates_at_10 = {e for e in ENTITIES if predict(rt, e)["variant"] == "candidate"}
    second = plan(tmp_path, weight=50)
    asyncio.run(rt.plans.apply(second))
    assert loads == ["v2"]  # loaded once
    assert rt.plans.active.candidate is variant  # its breaker and metric children kept
    candidates_at_50 = {e for e in ENTITIES if predict(rt, e)["variant"] == "candidate"}
    assert candidates_at_10 < candidates_at_50
    assert weight_gauge(rt, "fraud-v2", first.revision) is None
    assert weight_gauge(rt, "fraud-v2", second.revision) == 50


def test_removing_the_experiment_drops_the_candidate(tmp_path: Path) -> None:
    rt, _ = make_runtime(tmp_path)
    p = plan(tmp_path, weight=100)
    asyncio.run(rt.plans.apply(p))
    assert predict(rt, "e1")["variant"] == "candidate"
    asyncio.run(rt.plans.apply(CHAMPION_ONLY))
    assert rt.plans.active.candidate is None
    assert all(predict(rt, e)["variant"] == "champion" for e in ENTITIES[:50])
    assert weight_gauge(rt, "fraud-v2", p.revision) is None
    assert weight_gauge(rt, "", "") == 0


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        ("digest", "ArtifactUnavailable"),
        ("missing", "ArtifactUnavailable"),
        ("signature", "ModelInvalid"),
    ],
)
def test_a_candidate_that_fails_to_load_leaves_the_champion_serving(
    tmp_path: Path, breakage: str, reason: str
) -> None:
    rt, _ = make_runtime(tmp_path)
    good = plan(tmp_path, weight=50)
    asyncio.run(rt.plans.apply(good))
    assert rt.plans.active.candidate is not None
    art = {"uri": f"file://{tmp_path / 'candidate.onnx'}", "sha256": "0" * 64}
    if breakage == "missing":
        art = {"uri": f"file://{tmp_path / 'nope.onnx'}", "sha256": "0" * 64}
    elif breakage == "signature":
        path = write_sum_model(tmp_path / "bad.onnx", ["amount", "not_a_feature"])
        art = {"uri": f"file://{path}", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    bad = with_revision(
        TrafficPlan.model_validate(
            {
                **good.model_dump(by_alias=True, exclude={"revision"}),
                "candidate": {"version": "v3", "artifact": art},
                "weight": 75,
            }
        )
    )
    assert asyncio.run(rt.plans.apply(bad)) is False
    assert all(predict(rt, e)["variant"] == "champion" for e in ENTITIES[:100])
    assert weight_gauge(rt, "fraud-v2", bad.revision) == 0  # the plan is not applied
    assert weight_gauge(rt, "fraud-v2", good.revision) is None
    labels = {"model": "fraud", "experiment": "fraud-v2", "revision": bad.revision}
    assert sample(rt, "rtml_candidate_load_error", **labels, version="v3", reason=reason) == 1
    assert rt.plans.failed == bad
    # The next plan that loads clears the error.
    asyncio.run(rt.plans.apply(good))
    assert sample(rt, "rtml_candidate_load_error", **labels, version="v3", reason=reason) == 0
    assert weight_gauge(rt, "fraud-v2", good.revision) == 50


def test_start_applies_the_plan_before_ready(tmp_path: Path) -> None:
    rt, reader = make_runtime(tmp_path)  # started champion-only; start again with a plan
    p = plan(tmp_path, weight=100)
    asyncio.run(rt.start(reader, plan=p))
    assert rt.ready
    assert predict(rt, "e1")["variant"] == "candidate"


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_shadow_scores_off_the_response_path(tmp_path: Path) -> None:
    rt, _ = make_runtime(tmp_path)
    p = plan(tmp_path, strategy="shadow", weight=50)
    asyncio.run(rt.plans.apply(p))
    answers = [predict(rt, e) for e in ENTITIES]
    assert all(a["variant"] == "champion" for a in answers)
    assert all(a["score"] == pytest.approx(champion_score(0.5)) for a in answers)
    shadow = {"model": "fraud", "version": "v2", "variant": "shadow"}
    wait_for(lambda: rt.shadow.pending == 0 and sample(rt, "rtml_prediction_score_count", **shadow))
    scored = sample(rt, "rtml_requests_total", **shadow, outcome="ok")
    wait_for(lambda: sample(rt, "rtml_requests_total", **shadow, outcome="ok") == scored)
    assert 150 < scored < 250  # the sampled half
    total = sample(rt, "rtml_prediction_score_sum", **shadow)
    assert total / scored == pytest.approx(candidate_score(0.5))  # the candidate's scores
    assert weight_gauge(rt, "fraud-v2", p.revision) == 50
    asyncio.run(rt.close())
    assert rt.shadow.process is None


def test_ending_the_shadow_plan_stops_its_worker_and_later_rows_are_not_shadowed(
    tmp_path: Path,
) -> None:
    rt, _ = make_runtime(tmp_path)
    asyncio.run(rt.plans.apply(plan(tmp_path, strategy="shadow", weight=100)))
    worker = rt.shadow.process
    assert worker is not None
    asyncio.run(rt.plans.apply(CHAMPION_ONLY))
    assert rt.shadow.process is None
    assert worker.proc.returncode is not None
    answers = [predict(rt, e) for e in ENTITIES[:10]]
    assert all(a["score"] == pytest.approx(champion_score(0.5)) for a in answers)
    shadow = {"model": "fraud", "version": "v2", "variant": "shadow"}
    assert sample(rt, "rtml_shadow_dropped_total", **shadow) == 0
