"""Which keys of `request` and `features` a rule reads (rtml.api.expressions.referenced_keys):
the runtime builds each evaluation's variables from only those, so a rule must evaluate the
same over the cut maps as over the whole ones."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from rtml.api.expressions import (
    activation,
    compile_expression,
    evaluate,
    only,
    referenced_keys,
)

pytestmark = pytest.mark.unit

ALL = None  # the whole map


@pytest.mark.parametrize(
    ("source", "request_keys", "feature_keys"),
    [
        ("request.amount > 10000.0", {"amount"}, set()),
        (
            "features.txn_count_1h > 10 && request.amount > 5.0 * features.amount_mean_30d",
            {"amount"},
            {"txn_count_1h", "amount_mean_30d"},
        ),
        ("has(features.x) && features['y'] > 1 && request[\"z\"] == 'a.b'", {"z"}, {"x", "y"}),
        ("features.a.b == 1", set(), {"a"}),
        ("request.x.features > 1", {"x"}, set()),  # a field named `features` of request.x
        ("'features.q' == request.a", {"a"}, set()),  # inside a string: not a reference
        ("request.a // features.c\n > 1", {"a"}, set()),  # inside a comment
        ('r"\\" == request.s', {"s"}, set()),  # a raw string ending in a backslash
        ('"say \\"features.x\\"" == request.s', {"s"}, set()),  # escaped quotes
        ("request.a > .5", {"a"}, set()),
        ("size(features) > 3", set(), ALL),
        ("features.exists(k, k == 'a')", set(), ALL),  # a macro on the map itself
        ("features[request.k] > 1", {"k"}, ALL),  # a key only known when evaluated
        ("features['a\\'b'] > 1", set(), ALL),  # a key with an escape: not read here
        (".features.x > 1", set(), ALL),  # the root-qualified name
        ("[1].exists(features, features > 0)", set(), ALL),  # a bound name shadowing it
    ],
)
def test_the_keys_a_rule_names(
    source: str, request_keys: set[str] | None, feature_keys: set[str] | None
) -> None:
    keys = referenced_keys([source])
    assert keys["request"] == (None if request_keys is None else frozenset(request_keys))
    assert keys["features"] == (None if feature_keys is None else frozenset(feature_keys))


def test_the_keys_of_several_rules_are_their_union_and_one_whole_map_use_wins() -> None:
    keys = referenced_keys(["request.a > 1", "features.b > 2", "request.c == 'x'"])
    assert keys == {"request": frozenset({"a", "c"}), "features": frozenset({"b"})}
    assert referenced_keys(["features.b > 2", "size(features) > 0"])["features"] is None


def test_only_keeps_the_named_keys_it_has() -> None:
    values = {"a": 1, "b": None, "c": 3}
    assert only(values, frozenset({"a", "b", "z"})) == {"a": 1, "b": None}
    assert only(values, None) == values
    assert only(values, None) is not values  # a copy: the caller's map is never handed on


EXPRESSIONS = [
    "request.amount > 10000.0",
    "features.txn_count_1h > 10 && request.amount > 5.0 * features.amount_mean_30d",
    "has(features.account_age_days) && features.account_age_days < 7",
    "features['txn_count_1h'] > 3 || request.hour_of_day < 6.0",
    "size(features) > 3",
    "features.exists(k, k == 'night_share')",
    "request.amount > 1.0 && !has(request.channel)",
    "features[request.which] > 1.0",
]
REQUESTS = [
    {},
    {"amount": 12000.0, "hour_of_day": 3.0, "which": "txn_count_1h"},
    {"amount": 20.0, "hour_of_day": 14.0, "channel": "web", "which": "absent"},
    {"amount": "not a number"},
]
FEATURES = [
    {},
    {"txn_count_1h": 12.0, "amount_mean_30d": 40.0, "account_age_days": 2.0, "other": 1.0},
    {"txn_count_1h": 1.0, "amount_mean_30d": None, "night_share": 0.5},
]


@pytest.mark.parametrize("source", EXPRESSIONS)
def test_a_rule_over_its_keys_evaluates_as_over_the_whole_maps(source: str) -> None:
    program = compile_expression(source)
    keys = referenced_keys([source])
    for request, features in itertools.product(REQUESTS, FEATURES):
        whole: Any = evaluate(program, activation(dict(request), dict(features)))
        cut = evaluate(
            program,
            activation(only(request, keys["request"]), only(features, keys["features"])),
        )
        assert cut == whole, (source, request, features)
