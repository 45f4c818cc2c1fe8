"""spec.output and spec.features.columns in the pure signature check (rtml.api.signature)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from rtml.api.model import Model
from rtml.api.signature import InputSpec, Mismatch, OutputChoice, check_signature, choose_output
from rtml.operator.signature import SignatureCache, check_model_signature

LABEL = InputSpec("output_label", "tensor(int64)", (None,))
ZIPMAP = InputSpec("output_probability", "seq(map(int64,tensor(float)))", (None, 2))
PROBS = InputSpec("probabilities", "tensor(float)", (None, 2))
WIDE = [InputSpec("X", "tensor(float)", (None, 4))]


def test_the_default_is_an_output_named_score_then_the_only_float_tensor() -> None:
    score = InputSpec("score", "tensor(float)", (None,))
    assert choose_output([LABEL, PROBS, score]) == OutputChoice("score", None)
    # skl2onnx with zipmap off: the label and one float matrix; its last column is P(class 1)
    assert choose_output([LABEL, PROBS]) == OutputChoice("probabilities", None)


@pytest.mark.parametrize(
    ("outputs", "says"),
    [
        ([LABEL, ZIPMAP], "no float tensor outputs"),  # skl2onnx's default export
        ([PROBS, InputSpec("raw", "tensor(float)", (None, 2))], "2 float tensor outputs"),
        ([InputSpec("p", "tensor(float)", (None, 3))], "has 3 columns"),  # three classes
    ],
)
def test_no_default_is_guessed_when_the_score_is_ambiguous(
    outputs: list[InputSpec], says: str
) -> None:
    got = choose_output(outputs)
    assert isinstance(got, Mismatch)
    assert got.reason == "AmbiguousOutput"
    assert says in got.message
    assert "spec.output" in got.message


def test_a_zipmap_output_is_taken_by_name_with_its_class_column() -> None:
    assert choose_output([LABEL, ZIPMAP], "output_probability", 1) == OutputChoice(
        "output_probability", 1, zipmap=True
    )
    no_column = choose_output([LABEL, ZIPMAP], "output_probability")
    assert isinstance(no_column, Mismatch)
    assert no_column.input == "spec.output.column"


@pytest.mark.parametrize(
    ("name", "column", "reason", "field"),
    [
        ("probs", None, "UnknownOutput", "spec.output.name"),
        ("output_probability", 2, "OutputColumnOutOfRange", "spec.output.column"),
        ("probabilities", 5, "OutputColumnOutOfRange", "spec.output.column"),
        ("output_label", 1, "OutputColumnOutOfRange", "spec.output.column"),  # [N]: column 0 only
        ("names", None, "UnsupportedOutput", "spec.output.name"),
    ],
)
def test_a_wrong_output_names_the_field(
    name: str, column: int | None, reason: str, field: str
) -> None:
    names = InputSpec("names", "tensor(string)", (None,))
    got = choose_output([LABEL, ZIPMAP, PROBS, names], name, column)
    assert isinstance(got, Mismatch)
    assert (got.reason, got.input) == (reason, field), got.message
    assert field in got.message


def test_an_int_label_output_may_be_the_score_when_named() -> None:
    assert choose_output([LABEL, ZIPMAP], "output_label") == OutputChoice("output_label", None)
    assert choose_output([LABEL], "output_label", 0) == OutputChoice("output_label", None)


def test_spec_columns_name_a_wide_input_without_metadata() -> None:
    features = ["a", "b", "c", "d"]
    assert check_signature(WIDE, None, features, None, columns=features) == []
    (undeclared,) = check_signature(WIDE, None, [], None)
    assert undeclared.reason == "UndeclaredColumns"
    assert "spec.features.columns" in undeclared.message


def test_spec_columns_must_agree_with_the_metadata_and_the_width() -> None:
    feats = ["a", "b", "c", "d"]
    (disagree,) = check_signature(WIDE, None, feats, ["b", "a", "c", "d"], columns=feats)
    assert (disagree.reason, disagree.input) == ("ColumnsDisagree", "spec.features.columns")
    short = check_signature(WIDE, None, ["a", "b", "c"], None, columns=["a", "b", "c"])
    assert [m.reason for m in short] == ["WrongShape"]
    assert "spec.features.columns names 3" in short[0].message
    twice = check_signature(WIDE, None, feats, None, columns=["a", "b", "a", "d"])
    assert "DuplicateColumn" in [m.reason for m in twice]


def test_spec_columns_are_refused_for_named_inputs() -> None:
    named = [InputSpec("a", "tensor(float)", (None, 1)), InputSpec("b", "tensor(float)", (None,))]
    (m,) = check_signature(named, None, ["a", "b"], None, columns=["a", "b"])
    assert (m.reason, m.input) == ("UnexpectedColumns", "spec.features.columns")


def test_outputs_are_judged_only_when_given() -> None:
    feats = ["a", "b", "c", "d"]
    assert check_signature(WIDE, None, feats, feats) == []  # no outputs: not judged
    (m,) = check_signature(WIDE, None, feats, feats, outputs=[LABEL, ZIPMAP])
    assert m.reason == "AmbiguousOutput"
    ok = check_signature(
        WIDE, None, feats, feats, outputs=[LABEL, ZIPMAP], output=("output_probability", 1)
    )
    assert ok == []


def _exported_model(tmp_path: Path, output: dict[str, Any] | None) -> Model:
    """A 4-feature LogisticRegression as `skl2onnx.to_onnx` writes it, and its Model."""
    rng = np.random.default_rng(5)
    x = rng.random((100, 4)).astype(np.float32)
    clf = LogisticRegression().fit(x, (x[:, 0] > 0.5).astype(np.int64))
    path = tmp_path / "lr.onnx"
    path.write_bytes(to_onnx(clf, x[:1]).SerializeToString())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec: dict[str, Any] = {
        "version": "v1",
        "artifact": {"uri": f"file://{path}", "sha256": digest},
        "features": {"requestFeatures": list("abcd"), "columns": list("abcd")},
    }
    if output is not None:
        spec["output"] = output
    meta = {"name": "lr", "namespace": "ml", "uid": "u1", "generation": 1}
    return Model.model_validate({"metadata": meta, "spec": spec})


def test_the_operator_judges_the_output_of_an_exported_classifier(tmp_path: Path) -> None:
    cache = SignatureCache(tmp_path / "cache")
    good = check_model_signature(
        _exported_model(tmp_path, {"name": "output_probability", "column": 1}), None, cache
    )
    assert (good.status, good.reason) == ("True", "SignatureMatches"), good.message
    bad = check_model_signature(_exported_model(tmp_path, None), None, cache)
    assert (bad.status, bad.reason) == ("False", "SignatureMismatch")
    assert "set spec.output.name and spec.output.column" in bad.message
    wrong = check_model_signature(
        _exported_model(tmp_path, {"name": "output_probability", "column": 2}), None, cache
    )
    assert "spec.output.column is 2, but ONNX output 'output_probability' has 2" in wrong.message
