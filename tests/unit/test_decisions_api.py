"""spec.rules, spec.ensemble, spec.decision and spec.audit as the API models read them: a bad
expression is refused naming its field, before any pod starts (docs/decisions.md)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from rtml.api.expressions import ExpressionError, activation, compile_expression, evaluate
from rtml.operator.errors import describe_validation_error
from tests.unit.helpers import DIGEST, model

pytestmark = pytest.mark.unit


def rule(expression: str, name: str = "r", severity: str = "high") -> dict[str, Any]:
    return {"name": name, "expression": expression, "severity": severity}


def refusal(**spec: Any) -> str:
    with pytest.raises(ValidationError) as err:
        model(**spec)
    return describe_validation_error(err.value)


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("request.amount >", "is not a valid CEL expression"),
        ("amount > 10.0", "undeclared reference to 'amount'"),
        ("'a' + 1 == 'a1'", "no matching overload"),
        ("request.amount + 1.0", "must be a condition"),
    ],
)
def test_an_expression_that_does_not_compile_is_refused_naming_its_field(
    expression: str, why: str
) -> None:
    message = refusal(rules=[rule("true", "ok"), rule(expression)])
    assert "spec.rules[1].expression" in message
    assert why in message


def test_a_rule_name_used_twice_is_refused() -> None:
    assert "spec.rules[1].name r is used twice" in refusal(rules=[rule("true"), rule("false")])


def test_rules_compile_and_evaluate_over_request_and_features() -> None:
    m = model(rules=[rule("request.amount > 10000.0 && features.txn_count_1h > 20")])
    program = compile_expression(m.spec.rules[0].expression)
    hit = activation({"amount": 12000}, {"txn_count_1h": 21.0})
    miss = activation({"amount": 12000.0}, {"txn_count_1h": 3})
    assert evaluate(program, hit) is True
    assert evaluate(program, miss) is False
    # A key the request lacks is no hit, and no exception either.
    assert evaluate(program, activation({}, {})) is None


def test_a_dyn_expression_that_is_not_a_boolean_evaluates_to_none() -> None:
    program = compile_expression("request.flag")
    assert evaluate(program, activation({"flag": 3}, {})) is None
    with pytest.raises(ExpressionError, match="must be a condition"):
        compile_expression("1 + 2")


def test_the_ensemble_requires_more_than_half_by_default() -> None:
    member = {"artifact": {"uri": "s3://b/m.onnx", "sha256": DIGEST}}
    one = model(ensemble={"models": [{"name": "a", **member}]}).spec.ensemble
    two = model(
        ensemble={"models": [{"name": "a", **member}, {"name": "b", **member}]}
    ).spec.ensemble
    assert one is not None
    assert two is not None
    assert one.required == 1  # 1 of 2 may fail, 2 of 2 may not
    assert two.required == 2  # 1 of 3 may fail
    assert "'primary' is the name" in refusal(ensemble={"models": [{"name": "primary", **member}]})
    assert "minHealthy must not exceed" in refusal(
        ensemble={"models": [{"name": "a", **member}], "minHealthy": 3}
    )
    assert "spec.ensemble.models.0.artifact" in refusal(
        ensemble={"models": [{"name": "a", "artifact": {"uri": "s3://b/m.onnx"}}]}
    )


def test_thresholds_must_ascend_and_default_to_review_and_block() -> None:
    spec = model(decision={}).spec
    assert spec.decision is not None
    assert [t.action for t in spec.decision.thresholds] == ["review", "block"]
    assert spec.decides
    assert not model().spec.decides
    t = {"action": "block", "riskLevel": "high"}
    assert "ascending order of minScore" in refusal(
        decision={"thresholds": [{"minScore": 0.5, **t}, {"minScore": 0.5, **t}]}
    )


def test_unverified_ensemble_artifacts_are_listed() -> None:
    m = model(
        ensemble={
            "models": [{"name": "a", "artifact": {"uri": "file://m.onnx", "allowUnverified": True}}]
        }
    )
    assert m.spec.unverified_artifacts() == [("spec.ensemble.models[0].artifact", "file://m.onnx")]
