"""Models as exporters write them, scored by the runtime's OnnxModel with nothing but the
Model's spec.features.columns and spec.output: skl2onnx's classifiers with their default ZipMap
output, and with it off. The scores must equal scikit-learn's own predict_proba."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from skl2onnx import to_onnx
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from rtml.api.signature import InputSpec
from rtml.onnx_inputs import onnx_graph
from rtml_runtime.onnx_model import ModelError, OnnxModel

COLUMNS = ["amount", "age", "velocity", "risk"]
RNG = np.random.default_rng(7)
X = RNG.random((400, 4)).astype(np.float32)
BINARY = (X[:, 0] + X[:, 2] > 1).astype(np.int64)
THREE = np.digitize(X[:, 1] + X[:, 3], [0.7, 1.3]).astype(np.int64)


def export(estimator: Any, zipmap: bool = True) -> bytes:
    """`skl2onnx.to_onnx` as a user calls it: one float32 sample row, no rtml metadata."""
    options = None if zipmap else {id(estimator): {"zipmap": False}}
    return bytes(to_onnx(estimator, X[:1], options=options).SerializeToString())


def check_scores(model: OnnxModel, expected: np.ndarray) -> None:
    rows = X[:70]
    assert np.allclose([model.predict_one(r.tolist()) for r in rows[:5]], expected[:5], atol=1e-5)
    assert np.allclose(model.predict_rows(rows[:9].tolist()), expected[:9], atol=1e-5)
    assert np.allclose(model.predict(rows), expected[:70], atol=1e-5)  # over the bound batches


def test_a_logistic_regression_as_skl2onnx_exports_it() -> None:
    clf = LogisticRegression().fit(X, BINARY)
    model = OnnxModel(
        Path("lr.onnx"), data=export(clf), columns=COLUMNS, output=("output_probability", 1)
    )
    assert model.feature_names == COLUMNS
    check_scores(model, clf.predict_proba(X)[:, 1])


def test_its_zipmap_output_is_never_guessed() -> None:
    clf = LogisticRegression().fit(X, BINARY)
    with pytest.raises(ModelError, match=r"no output named 'score'.*set spec\.output\.name"):
        OnnxModel(Path("lr.onnx"), data=export(clf), columns=COLUMNS)


def test_without_zipmap_the_only_float_output_is_the_default() -> None:
    clf = LogisticRegression().fit(X, BINARY)
    model = OnnxModel(Path("lr.onnx"), data=export(clf, zipmap=False), columns=COLUMNS)
    check_scores(model, clf.predict_proba(X)[:, 1])


@pytest.mark.parametrize("zipmap", [True, False])
def test_a_three_class_forest_is_scored_by_the_column_named(zipmap: bool) -> None:
    forest = RandomForestClassifier(n_estimators=8, max_depth=4, random_state=0).fit(X, THREE)
    name = "output_probability" if zipmap else "probabilities"
    model = OnnxModel(
        Path("rf.onnx"), data=export(forest, zipmap), columns=COLUMNS, output=(name, 2)
    )
    check_scores(model, forest.predict_proba(X)[:, 2])
    with pytest.raises(ModelError, match=r"spec\.output\.column is 3, but .* has 3 columns"):
        OnnxModel(Path("rf.onnx"), data=export(forest, zipmap), columns=COLUMNS, output=(name, 3))


def test_a_wide_input_without_columns_or_metadata_says_which_field_names_them() -> None:
    clf = LogisticRegression().fit(X, BINARY)
    model = OnnxModel(Path("lr.onnx"), data=export(clf, zipmap=False))
    with pytest.raises(ModelError, match=r"neither spec\.features\.columns nor"):
        _ = model.feature_names


def test_the_operator_reads_the_outputs_and_the_class_count(tmp_path: Path) -> None:
    path = tmp_path / "rf.onnx"
    forest = RandomForestClassifier(n_estimators=4, max_depth=3, random_state=0).fit(X, THREE)
    path.write_bytes(export(forest))
    graph = onnx_graph(path)
    assert graph.inputs == [InputSpec("X", "tensor(float)", (None, 4))]
    assert graph.declared is None
    assert graph.outputs == [
        InputSpec("output_label", "tensor(int64)", (None,)),
        InputSpec("output_probability", "seq(map(int64,tensor(float)))", (None, 3)),
    ]
