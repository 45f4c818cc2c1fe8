"""Decisions: the pure parts (thresholds, rules' severities, ensemble combination, the
more-than-half rule) and the data plane with real ONNX Runtime sessions (docs/decisions.md)."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import hiredis
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rtml.api.model import Decision
from rtml_runtime import decision
from rtml_runtime.audit import audit_record, encode_fields, inputs_digest, xadd_prefix
from rtml_runtime.ensemble import INLINE_AFTER, enough_scored, weighted_score
from rtml_runtime.errors import RequestError
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
