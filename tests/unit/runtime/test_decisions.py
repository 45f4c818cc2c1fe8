"""Decisions: the pure parts (thresholds, rules' severities, ensemble combination, the
more-than-half rule) and the data plane with real ONNX Runtime sessions (docs/decisions.md)."""

from __future__ import annotations

import asyncio
import json
import math
import random
from pathlib import Path
from typing import Any

import hiredis
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rtml.api.model import Decision
from rtml_runtime import decision
from rtml_runtime import fused as fused_module
from rtml_runtime.audit import (
    RecordEncoder,
    audit_record,
    encode_fields,
    inputs_digest,
    xadd_prefix,
)
from rtml_runtime.ensemble import INLINE_AFTER, enough_scored, weighted_score
from rtml_runtime.errors import RequestError
from rtml_runtime.fused import fusable
from rtml_runtime.onnx_model import OnnxModel
from rtml_runtime.rules import RuleHit, RuleSet
from rtml_runtime.v2codec import from_json
from tests.unit.helpers import model
from tests.unit.runtime.onnx_fixtures import write_sum_model
from tests.unit.runtime.test_engine import digest, make_runtime, sigmoid

pytestmark = pytest.mark.unit
POLICY = Decision.model_validate(
    {
        "thresholds": [
            {"minScore": 0.3, "action": "review", "riskLevel": "medium", "reason": "elevated"},
            {"minScore": 0.9, "action": "block", "riskLevel": "high", "reason": "high"},
        ],
        "conservative": {"action": "block", "riskLevel": "high", "reason": "no models"},
    }
)
MEDIUM = RuleHit("night", "medium", "night-time")
LOW = RuleHit("new", "low", "new card")


@pytest.mark.parametrize(
    ("score", "action", "risk", "reasons"),
    [
        (0.0, "approve", "low", ()),
        (0.2999, "approve", "low", ()),
        (0.3, "review", "medium", ("elevated",)),
        (0.89, "review", "medium", ("elevated",)),
        (0.9, "block", "high", ("high",)),
        (1.0, "block", "high", ("high",)),
    ],
)
def test_the_last_threshold_the_score_reaches_decides(
    score: float, action: str, risk: str, reasons: tuple[str, ...]
) -> None:
    assert decision.by_score(POLICY, score, []) == decision.Verdict(action, risk, reasons)


def test_a_medium_hit_raises_to_review_and_a_low_one_only_adds_its_reason() -> None:
    assert decision.by_score(POLICY, 0.1, [LOW]) == decision.Verdict(
        "approve", "low", ("new card",)
    )
    raised = decision.by_score(POLICY, 0.1, [MEDIUM, LOW])
    assert raised == decision.Verdict("review", "medium", ("night-time", "new card"))
    # Never lowered: a block stays a block.
    assert decision.by_score(POLICY, 0.95, [MEDIUM]).action == "block"


def test_the_conservative_decision_and_a_blocking_rule() -> None:
    assert decision.conservative(POLICY, [LOW]) == decision.Verdict(
        "block", "high", ("new card", "no models")
    )
    high = RuleHit("huge", "high", "amount over 10,000")
    assert decision.blocked([high, LOW]) == decision.Verdict(
        "block", "high", ("amount over 10,000", "new card")
    )
    assert decision.at_or_above("block", "review")
    assert not decision.at_or_above("approve", "review")


def test_the_weighted_mean_leaves_a_failing_models_weight_out() -> None:
    weights = {"primary": 1.0, "a": 3.0}
    assert weighted_score({"primary": 0.2, "a": 0.6}, weights) == pytest.approx(0.5)
    assert weighted_score({"primary": 0.2, "a": None}, weights) == pytest.approx(0.2)
    assert weighted_score({"primary": None, "a": None}, weights) is None


@pytest.mark.parametrize(
    ("scores", "required", "enough"),
    [
        ({"p": 0.1, "a": None}, 1, True),  # 1 of 2 failing: not more than half
        ({"p": None, "a": None}, 1, False),
        ({"p": 0.1, "a": None, "b": None}, 2, False),  # 2 of 3 failing: more than half
        ({"p": 0.1, "a": 0.2, "b": None}, 2, True),
        ({"p": None}, 1, False),  # one model of one failing is more than half
    ],
)
def test_more_than_half_failing_is_not_enough(
    scores: dict[str, float | None], required: int, enough: bool
) -> None:
    assert enough_scored(scores, required) is enough


def test_rules_report_every_hit_and_count_failed_evaluations() -> None:
    spec = model(
        rules=[
            {"name": "huge", "expression": "request.amount > 100.0", "severity": "high"},
            {"name": "busy", "expression": "features.n > 2", "severity": "medium"},
            {"name": "gone", "expression": "request.missing == 1", "severity": "low"},
        ]
    ).spec
    rules = RuleSet(spec.rules)
    out = rules.evaluate({"amount": 150}, {"n": 3.0})
    assert [h.name for h in out.hits] == ["huge", "busy"]
    assert out.blocking
    assert out.failed == ("gone",)
    assert not rules.evaluate({"amount": 50.0}, {"n": 1}).blocking


# -- the data plane, real ONNX Runtime sessions ------------------------------------------------
HIGH_RULE = {
    "name": "huge",
    "expression": "request.amount > 100.0",
    "severity": "high",
    "reason": "amount over 100",
}


def calls(rt: Any, member: str, outcome: str = "ok") -> float:
    child = rt.metrics.model_calls.labels("fraud", member, outcome)
    return float(child._value.get())


def test_a_high_rule_blocks_without_calling_the_model(tmp_path: Path) -> None:
    rt, _ = make_runtime(tmp_path, rules=[HIGH_RULE])
    out = asyncio.run(rt.predict({"card_id": "c1", "features": {"amount": 150.0}}))
    assert (out["decision"], out["riskLevel"], out["score"]) == ("block", "high", None)
    assert (out["reasons"], out["ruleHits"], out["modelScores"]) == (
        ["amount over 100"],
        ["huge"],
        {},
    )
    assert calls(rt, "primary") == 0
    ok = asyncio.run(rt.predict({"card_id": "c1", "features": {"amount": 0.5}}))
    assert (ok["decision"], ok["ruleHits"]) == ("block", [])  # sigmoid(3.5) = 0.97: by score
    assert ok["modelScores"] == {"primary": pytest.approx(sigmoid(3.5), rel=1e-6)}
    assert calls(rt, "primary") == 1


def test_an_ensemble_answers_the_weighted_mean(tmp_path: Path) -> None:
    other = write_sum_model(tmp_path / "other.onnx", ["a", "b", "amount"], bias=-3.5)
    member = {
        "name": "other",
        "artifact": {"uri": f"file://{other}", "sha256": digest(other)},
        "weight": 3.0,
    }
    rt, _ = make_runtime(tmp_path, ensemble={"models": [member], "timeoutMs": 5000})
    out = asyncio.run(rt.predict({"card_id": "c1", "features": {"amount": 0.5}}))
    mean = (sigmoid(3.5) + 3 * sigmoid(0.0)) / 4
    assert out["score"] == pytest.approx(mean, rel=1e-6)
    assert out["modelScores"]["other"] == pytest.approx(0.5, rel=1e-6)
    assert out["degraded"] is False
    assert out["decision"] == "review"  # default thresholds: 0.5 review, 0.8 block
    batch = asyncio.run(
        rt.predict_batch({"instances": [{"card_id": "c1", "features": {"amount": 0.5}}]})
    )
    assert batch["predictions"][0]["score"] == pytest.approx(mean, rel=1e-6)
    assert batch["predictions"][0]["decision"] == "review"
    asyncio.run(rt.close())


def test_a_member_that_proves_fast_is_scored_in_line_until_a_slow_call(tmp_path: Path) -> None:
    other = write_sum_model(tmp_path / "other.onnx", ["a", "b", "amount"], bias=-3.5)
    member = {"name": "other", "artifact": {"uri": f"file://{other}", "sha256": digest(other)}}
    rt, _ = make_runtime(tmp_path, ensemble={"models": [member], "timeoutMs": 5000})
    assert rt.assessor is not None
    assert rt.assessor.ensemble is not None
    scorer = rt.assessor.ensemble
    (m,) = scorer.members
    request = {"card_id": "c1", "features": {"amount": 0.5}}
    seen = []
    for _ in range(INLINE_AFTER + 1):
        seen.append(scorer.inline(m))
        out = asyncio.run(rt.predict(request))
        assert out["modelScores"]["other"] == pytest.approx(0.5, rel=1e-6)
    # In its thread until INLINE_AFTER fast calls in a row (5 s timeout: each far under 10%).
    assert seen == [False] * INLINE_AFTER + [True]
    assert scorer.inline(m)
    ok_before = calls(rt, "other", "ok")
    scorer.fast_s = 0.0  # from now on every call counts as slow
    out = asyncio.run(rt.predict(request))
    assert out["modelScores"]["other"] == pytest.approx(0.5, rel=1e-6)  # in line, answered
    assert calls(rt, "other", "ok") == ok_before + 1
    assert not scorer.inline(m)  # one slow call: back to its thread
    asyncio.run(rt.close())


def _member(tmp_path: Path, name: str, opset: int = 17, **kw: Any) -> dict[str, Any]:
    path = write_sum_model(tmp_path / f"{name}.onnx", ["a", "b", "amount"], opset, **kw)
    return {"name": name, "artifact": {"uri": f"file://{path}", "sha256": digest(path)}}


def _never(row: Any) -> float:
    raise AssertionError("scored alone: the fused session should have scored it")


def test_members_reading_the_primarys_inputs_are_fused_into_one_call(tmp_path: Path) -> None:
    # The primary is opset 17; this member opset 13: the fused graph converts it up.
    ensemble = {"models": [_member(tmp_path, "other", 13, bias=-3.5)], "timeoutMs": 5000}
    rt, _ = make_runtime(tmp_path, ensemble=ensemble)
    assert rt.assessor is not None
    assert rt.assessor.ensemble is not None
    scorer = rt.assessor.ensemble
    assert scorer.fused is not None
    assert rt.model.model_bytes is None  # the bytes kept for fusing are dropped
    (m,) = scorer.members
    request = {"card_id": "c1", "features": {"amount": 0.5}}
    for _ in range(INLINE_AFTER):  # in its thread until it has proved fast
        asyncio.run(rt.predict(request))
    # From now on neither model is called alone: each would raise, and the answer lose it.
    rt.model.predict_one = _never  # type: ignore[method-assign]
    m.model.predict_one = _never  # type: ignore[method-assign]
    primary_ok, member_ok = calls(rt, "primary"), calls(rt, "other")
    out = asyncio.run(rt.predict(request))
    assert out["modelScores"] == {
        "primary": pytest.approx(sigmoid(3.5), rel=1e-6),
        "other": pytest.approx(0.5, rel=1e-6),
    }
    assert out["degraded"] is False
    assert (calls(rt, "primary"), calls(rt, "other")) == (primary_ok + 1, member_ok + 1)
    assert scorer.inline(m)  # the fused call's time counts as the member's
    asyncio.run(rt.close())


def test_a_failing_fused_call_scores_the_models_one_by_one(tmp_path: Path) -> None:
    ensemble = {"models": [_member(tmp_path, "other", bias=-3.5)], "timeoutMs": 5000}
    rt, _ = make_runtime(tmp_path, ensemble=ensemble)
    assert rt.assessor is not None
    assert rt.assessor.ensemble is not None
    scorer = rt.assessor.ensemble
    assert scorer.fused is not None
    request = {"card_id": "c1", "features": {"amount": 0.5}}
    for _ in range(INLINE_AFTER):
        asyncio.run(rt.predict(request))
    scorer.fused.predict_one = _never  # type: ignore[method-assign]
    out = asyncio.run(rt.predict(request))
    assert out["modelScores"] == {
        "primary": pytest.approx(sigmoid(3.5), rel=1e-6),
        "other": pytest.approx(0.5, rel=1e-6),
    }
    assert calls(rt, "primary", "error") == calls(rt, "other", "error") == 0
    # A member whose breaker is not closed is called (or not) on its own, never fused.
    (m,) = scorer.members
    for _ in range(4):
        m.breaker.record(1.0, ok=False)
    out = asyncio.run(rt.predict(request))
    assert out["modelScores"]["other"] is None
    assert calls(rt, "other", "open") == 1
    asyncio.run(rt.close())


def _two_outputs(path: Path) -> bytes:
    """`path`'s model with its score also under the member's fused output name."""
    model = onnx.load(str(path))
    model.graph.node.append(helper.make_node("Identity", ["score"], ["rtml_member1/score"]))
    model.graph.output.append(
        helper.make_tensor_value_info("rtml_member1/score", TensorProto.FLOAT, [None, 1])
    )
    return model.SerializeToString()


def test_members_are_fused_only_when_they_read_the_same_inputs_and_score_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def load(name: str, inputs: list[str]) -> OnnxModel:
        return OnnxModel(write_sum_model(tmp_path / f"{name}.onnx", inputs), keep_bytes=True)

    assert fusable(load("p", ["a", "b"]), [load("q", ["a", "b"]), load("r", ["a", "b"])])
    assert not fusable(load("p", ["a", "b"]), [load("q", ["a", "b"]), load("r", ["a", "c"])])
    assert not fusable(load("p", ["a", "b"]), [load("q", ["b", "a"])])
    assert not fusable(load("p", ["a", "b"]), [OnnxModel(tmp_path / "q.onnx")])  # no bytes
    monkeypatch.setattr(fused_module, "MAX_FUSED_BYTES", 100)
    assert not fusable(load("p", ["a", "b"]), [load("q", ["a", "b"])])  # too big to copy
    monkeypatch.undo()
    # A merged graph that scores otherwise than the models alone is not used.
    wrong = write_sum_model(tmp_path / "wrong.onnx", ["a", "b", "amount"], bias=1.0)
    monkeypatch.setattr(fused_module, "_merged_bytes", lambda models: _two_outputs(wrong))
    rt, _ = make_runtime(tmp_path, ensemble={"models": [_member(tmp_path, "o")]})
    assert rt.assessor is not None
    assert rt.assessor.ensemble is not None
    assert rt.assessor.ensemble.fused is None
    for _ in range(INLINE_AFTER + 1):
        out = asyncio.run(rt.predict({"card_id": "c1", "features": {"amount": 0.5}}))
        assert out["modelScores"]["o"] == pytest.approx(sigmoid(3.5), rel=1e-6)
    asyncio.run(rt.close())


def test_paths_that_cannot_apply_rules_are_refused(tmp_path: Path) -> None:
    rt, _ = make_runtime(tmp_path, rules=[HIGH_RULE])
    rank = {"card_id": "c1", "instances": [{"features": {"amount": 1.0}}]}
    with pytest.raises(RequestError) as err:
        asyncio.run(rt.predict_batch(rank))
    assert err.value.code == "decisions_not_applied"
    infer = from_json(
        {
            "inputs": [
                {"name": n, "shape": [1], "datatype": "FP32", "data": [0.1]}
                for n in ("a", "b", "amount")
            ]
        }
    )
    with pytest.raises(RequestError, match=r"does not apply spec\.rules"):
        asyncio.run(rt.infer_v2("fraud", infer))


def test_a_model_without_decisions_answers_as_before(tmp_path: Path) -> None:
    rt, _ = make_runtime(tmp_path)
    out = asyncio.run(rt.predict({"card_id": "c1", "features": {"amount": 0.5}}))
    assert "decision" not in out
    assert not math.isnan(out["score"])


# -- audit records (the writer itself runs against a real Redis: tests/integration) -------------
ANSWER = {
    "score": 0.91,
    "model": "fraud",
    "version": "v1",
    "variant": "champion",
    "degraded": False,
    "decision": "block",
    "riskLevel": "high",
    "reasons": ["high risk"],
    "modelScores": {"primary": 0.93, "trees": 0.89},
    "ruleHits": [],
    "requestId": "r1",
}


def test_an_audit_record_carries_the_inputs_digest_not_the_inputs() -> None:
    inputs = {"card_id": "c1", "features": {"amount": 12.5, "hour_of_day": 3}}
    record = audit_record(ANSWER, inputs, "r1", 0.0, include_inputs=False)
    assert record["requestId"] == "r1"
    assert record["time"] == "1970-01-01T00:00:00.000+00:00"
    assert (record["decision"], record["riskLevel"], record["score"]) == ("block", "high", "0.91")
    assert json.loads(record["modelScores"]) == {"primary": 0.93, "trees": 0.89}
    assert "inputs" not in record
    assert "12.5" not in json.dumps(record)
    # The digest depends on the values, not on the order they came in.
    same = {"features": {"hour_of_day": 3, "amount": 12.5}, "card_id": "c1"}
    assert record["inputsSha256"] == inputs_digest(same)
    assert record["inputsSha256"] != inputs_digest({**inputs, "card_id": "c2"})
    with_inputs = audit_record(ANSWER, inputs, "r1", 0.0, include_inputs=True)
    assert json.loads(with_inputs["inputs"]) == inputs


def test_an_audit_record_is_encoded_as_the_xadd_redis_would_parse() -> None:
    record = audit_record(ANSWER, {"card_id": "c1", "features": {}}, "r1", 0.0, False)
    command = b"*%d\r\n" % (6 + 2 * len(record))
    command += xadd_prefix("fraud:audit", 1000) + encode_fields(record)
    reader = hiredis.Reader(encoding="utf-8")
    reader.feed(command)  # RESP for a command is an array of bulk strings, as a reply would be
    args = reader.gets()
    assert args[:6] == ["XADD", "fraud:audit", "MAXLEN", "~", "1000", "*"]
    assert dict(zip(args[6::2], args[7::2], strict=True)) == record
    assert reader.gets() is False  # nothing left over


def _random_answer(rng: random.Random) -> dict[str, Any]:
    def score() -> Any:
        return rng.choice(
            [
                None,
                rng.random(),
                rng.uniform(-1e6, 1e6),
                1e-300,
                0.0,
                1.0,
                math.nan,
                math.inf,
                -math.inf,
                7,
            ]
        )

    texts = ["high risk", 'say "why"', "nuit \u00e0 Paris", "\u26a0 burst", "", "a\\b\n"]
    names = ["primary", "logistic", "trees", "m\u00e9tier", "b", "a"]
    return {
        "score": score(),
        "model": rng.choice(["fraud", "fraud-detector", "d\u00e9tecteur"]),
        "version": rng.choice(["v1", "2026-12-04", "v\u00e9"]),
        "variant": rng.choice(["champion", "candidate"]),
        "degraded": rng.choice([True, False]),
        "decision": rng.choice(decision.ACTIONS),
        "riskLevel": rng.choice(decision.RISK_LEVELS),
        "reasons": rng.sample(texts, rng.randint(0, 3)),
        "modelScores": {n: score() for n in rng.sample(names, rng.randint(0, 3))},
        "ruleHits": rng.sample(["burst", "huge-amount", "n\u00e9w"], rng.randint(0, 2)),
    }


def test_the_record_encoder_writes_the_bytes_audit_record_defines() -> None:
    """The writer's fast encoder against the record's definition: numbers, lists, maps, names
    outside ASCII, with and without inputs, and timestamps on every rounding edge."""
    rng = random.Random(13)  # noqa: S311 (test data, not secrets)
    edges = [0.0, 0.0004999, 0.0005, 0.9994999, 0.9995, 0.9999994, 0.9999995, 0.9999996]
    times = [1.7e9 + rng.random() * 1e6 for _ in range(300)] + [1764806400 + e for e in edges]
    times += [-1.5, 253402300799.0]  # before 1970; the last second datetime can write
    for include in (False, True):
        encoder = RecordEncoder(include)
        for at in times:
            answer = _random_answer(rng)
            inputs = {
                "card_id": rng.choice(["c1", "k\u00e4rtchen"]),
                "features": {"x": rng.random()},
            }
            want = encode_fields(audit_record(answer, inputs, "r1", at, include))
            assert encoder.fields(answer, inputs, "r1", at) == want, (answer, at)
        assert encoder.count == len(audit_record(ANSWER, {}, "r1", 0.0, include))


def test_audit_with_the_sqlite_profile_and_no_redis_is_refused_in_words(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=r"spec\.audit needs a Redis.*RTML_AUDIT_REDIS_URL"):
        make_runtime(tmp_path, decision={}, audit={"stream": "audit"})


def write_slow_model(path: Path, inputs: list[str], depth: int = 150, width: int = 1024) -> Path:
    """The sum model's signature and score, plus a chain of `depth` dense layers whose result is
    added times zero: a real ONNX model that takes milliseconds a row (~160 M multiply-adds,
    as slow.onnx does), far beyond the 1 ms these tests give it."""
    rng = np.random.default_rng(0)
    first = rng.normal(0, 0.1, (len(inputs), width)).astype(np.float32)
    tied = rng.normal(0, 1 / np.sqrt(width), (width, width)).astype(np.float32)
    nodes = [
        helper.make_node("Concat", inputs, ["x"], axis=1),
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
        helper.make_node("MatMul", ["x", "w0"], ["h0"]),
    ]
    for i in range(1, depth + 1):
        nodes += [
            helper.make_node("MatMul", [f"h{i - 1}", "w"], [f"m{i}"]),
            helper.make_node("Tanh", [f"m{i}"], [f"h{i}"]),
        ]
    nodes += [
        helper.make_node("ReduceMean", [f"h{depth}"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["s", "nothing"], ["t"]),
        helper.make_node("Sigmoid", ["t"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 1]) for n in inputs],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        initializer=[
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
            numpy_helper.from_array(first, "w0"),
            numpy_helper.from_array(tied, "w"),
            numpy_helper.from_array(np.zeros((), np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def slow_member(tmp_path: Path) -> dict[str, Any]:
    slow = write_slow_model(tmp_path / "slow.onnx", ["a", "b", "amount"])
    return {"name": "slow", "artifact": {"uri": f"file://{slow}", "sha256": digest(slow)}}


def test_a_late_member_is_not_waited_for_and_its_breaker_opens(tmp_path: Path) -> None:
    rt, _ = make_runtime(tmp_path, ensemble={"models": [slow_member(tmp_path)], "timeoutMs": 1})
    request = {"card_id": "c1", "features": {"amount": 0.5}}
    for _ in range(4):  # the breaker's minimumCalls in make_runtime
        out = asyncio.run(rt.predict(request))
        assert out["modelScores"] == {
            "primary": pytest.approx(sigmoid(3.5), rel=1e-6),
            "slow": None,
        }
        assert out["score"] == out["modelScores"]["primary"]
        assert out["degraded"] is True
    assert calls(rt, "slow", "late") == 4
    asyncio.run(rt.predict(request))
    assert calls(rt, "slow", "open") == 1  # four failures of four: open, not called
    asyncio.run(rt.close())


def test_too_few_models_scoring_answers_the_conservative_decision(tmp_path: Path) -> None:
    ensemble = {"models": [slow_member(tmp_path)], "timeoutMs": 1, "minHealthy": 2}
    conservative = {"action": "block", "riskLevel": "high", "reason": "no models"}
    rt, _ = make_runtime(tmp_path, ensemble=ensemble, decision={"conservative": conservative})
    out = asyncio.run(rt.predict({"card_id": "c1", "features": {"amount": 0.5}}))
    assert (out["decision"], out["riskLevel"], out["reasons"]) == ("block", "high", ["no models"])
    assert out["score"] is None
    assert out["degraded"] is True
    asyncio.run(rt.close())
