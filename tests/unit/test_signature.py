"""check_signature: the train/serve rules the operator, the runtime and `rtml validate` share."""

from __future__ import annotations

from typing import Any

import pytest

from rtml.api.featureview import FeatureView
from rtml.api.signature import InputSpec, Mismatch, check_signature

pytestmark = pytest.mark.unit


def view(**dtypes: str) -> FeatureView:
    return FeatureView.model_validate(
        {
            "metadata": {"name": "cards"},
            "spec": {
                "entity": {"name": "card", "joinKey": "card_id"},
                "features": [{"name": n, "dtype": d} for n, d in dtypes.items()],
                "source": {"type": "push"},
            },
        }
    )


def scalar(name: str, dtype: str = "tensor(float)", shape: Any = (None, 1)) -> InputSpec:
    return InputSpec(name, dtype, tuple(shape))


def only(mismatches: list[Mismatch]) -> Mismatch:
    assert len(mismatches) == 1, mismatches
    return mismatches[0]


CARDS = view(count_1h="INT64", mean_24h="DOUBLE", risk="FLOAT", flagged="BOOL")


def test_all_good_is_an_empty_list() -> None:
    inputs = [scalar("count_1h"), scalar("mean_24h", shape=("batch",)), scalar("amount")]
    assert check_signature(inputs, CARDS, ["amount"]) == []


def test_missing_feature_names_the_input() -> None:
    m = only(check_signature([scalar("risk"), scalar("velocity")], CARDS, []))
    assert (m.input, m.reason) == ("velocity", "MissingFeature")
    assert "ONNX input 'velocity'" in m.message
    assert "FeatureView 'cards'" in m.message


def test_missing_feature_without_a_view() -> None:
    m = only(check_signature([scalar("amount"), scalar("hour")], None, ["amount"]))
    assert (m.input, m.reason) == ("hour", "MissingFeature")
    assert "reads no FeatureView" in m.message


@pytest.mark.parametrize(
    ("onnx_type", "feature_dtype"),
    [
        ("tensor(int64)", "FLOAT"),
        ("tensor(int64)", "DOUBLE"),
        ("tensor(int32)", "INT64"),
        ("tensor(bool)", "INT32"),
        ("tensor(float)", "STRING"),
    ],
)
def test_wrong_dtype(onnx_type: str, feature_dtype: str) -> None:
    m = only(check_signature([scalar("x", onnx_type)], view(x=feature_dtype), []))
    assert (m.input, m.reason) == ("x", "WrongDtype")
    short = onnx_type.removeprefix("tensor(").removesuffix(")")
    assert f"ONNX input 'x' is {short}, but FeatureView 'cards' feature 'x' is " in m.message


@pytest.mark.parametrize(
    ("onnx_type", "feature_dtype"),
    [
        ("tensor(float)", "INT64"),
        ("tensor(double)", "BOOL"),
        ("tensor(int64)", "INT32"),
        ("tensor(int64)", "BOOL"),
        ("tensor(int32)", "INT32"),
        ("tensor(bool)", "BOOL"),
    ],
)
def test_compatible_dtypes(onnx_type: str, feature_dtype: str) -> None:
    assert check_signature([scalar("x", onnx_type)], view(x=feature_dtype), []) == []


def test_a_string_input_is_unsupported_even_for_a_string_feature() -> None:
    m = only(check_signature([scalar("country", "tensor(string)")], view(country="STRING"), []))
    assert (m.input, m.reason) == ("country", "UnsupportedDtype")
    assert "ONNX input 'country' is string" in m.message


@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ((None, 3), "takes 3 columns per row"),
        ((8, 1), "fixed batch dimension of 8"),
        ((None, 1, 1), "rank 3"),
        ((), "rank 0"),
    ],
)
def test_wrong_shape(shape: tuple[Any, ...], words: str) -> None:
    inputs = [scalar("risk"), scalar("mean_24h", shape=shape)]
    m = only(check_signature(inputs, CARDS, []))
    assert (m.input, m.reason) == ("mean_24h", "WrongShape")
    assert "ONNX input 'mean_24h'" in m.message
    assert words in m.message


def test_a_batch_of_one_is_accepted() -> None:
    assert check_signature([scalar("risk", shape=(1, 1))], CARDS, []) == []


def test_extra_request_feature() -> None:
    m = only(check_signature([scalar("risk")], CARDS, ["tip"]))
    assert (m.input, m.reason) == ("tip", "UnknownRequestFeature")
    assert "request feature 'tip'" in m.message
    assert "['risk']" in m.message


def test_a_feature_both_in_the_request_and_the_view_is_ambiguous() -> None:
    m = only(check_signature([scalar("risk")], CARDS, ["risk"]))
    assert (m.input, m.reason) == ("risk", "AmbiguousFeature")
    assert "feature 'risk'" in m.message
    assert "FeatureView 'cards'" in m.message


def test_single_wide_input_is_checked_column_by_column() -> None:
    wide = [InputSpec("features", "tensor(int64)", (None, 3))]
    declared = ["count_1h", "flagged", "amount"]
    assert check_signature(wide, CARDS, ["amount"], declared) == []

    bad = check_signature(wide, CARDS, [], ["count_1h", "risk", "speed"])
    assert [(m.input, m.reason) for m in bad] == [
        ("risk", "WrongDtype"),
        ("speed", "MissingFeature"),
    ]
    assert "column 'risk' of ONNX input 'features' is int64" in bad[0].message
    assert "column 'speed' of ONNX input 'features'" in bad[1].message


def test_wide_input_needs_its_columns_named_and_counted() -> None:
    wide = [InputSpec("features", "tensor(float)", (None, 3))]
    m = only(check_signature(wide, CARDS, ["amount"]))
    assert (m.input, m.reason) == ("features", "UndeclaredColumns")
    assert "ONNX input 'features' takes 3 columns" in m.message
    m = only(check_signature(wide, CARDS, [], ["risk", "count_1h"]))
    assert (m.input, m.reason) == ("features", "WrongShape")
    assert "names 2" in m.message


def test_every_mismatch_is_reported_at_once() -> None:
    inputs = [scalar("velocity"), scalar("count_1h", "tensor(bool)"), scalar("risk", shape=(4,))]
    reasons = {m.reason for m in check_signature(inputs, CARDS, ["tip"])}
    assert reasons == {"MissingFeature", "WrongDtype", "WrongShape", "UnknownRequestFeature"}
