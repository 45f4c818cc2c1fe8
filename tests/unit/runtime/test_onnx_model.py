"""OnnxModel's one-row path (preallocated IOBinding) scores exactly what `session.run` scores."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rtml.onnx_inputs import DECLARED_FEATURES
from rtml_runtime.onnx_model import MAX_BOUND_ROWS, OnnxModel

pytestmark = pytest.mark.unit


Layout = list[tuple[str, int, list[int | None]]]


def _weighted_sum_model(path: Path, inputs: Layout) -> Path:
    """Each input cast to float, flattened to [N, k], concatenated, times 1..K, summed."""
    nodes, parts, widths = [], [], []
    for name, _elem, shape in inputs:
        last = shape[-1]
        widths.append(last if len(shape) == 2 and isinstance(last, int) else 1)
        nodes.append(helper.make_node("Cast", [name], [f"{name}_f"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Reshape", [f"{name}_f", f"{name}_shape"], [f"{name}_2d"]))
        parts.append(f"{name}_2d")
    initializers = [
        helper.make_tensor(f"{name}_shape", TensorProto.INT64, [2], [-1, w])
        for (name, _, _), w in zip(inputs, widths, strict=True)
    ]
    width = sum(widths)
    initializers.append(
        helper.make_tensor("w", TensorProto.FLOAT, [width, 1], [float(i + 1) for i in range(width)])
    )
    nodes += [
        helper.make_node("Concat", parts, ["concat"], axis=1),
        helper.make_node("MatMul", ["concat", "w"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "weighted",
        [helper.make_tensor_value_info(n, e, s) for n, e, s in inputs],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    if len(inputs) == 1 and width > 1:
        model.metadata_props.add(key=DECLARED_FEATURES, value=json.dumps(
            [f"c{i}" for i in range(width)]))  # fmt: skip
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


LAYOUTS: dict[str, Layout] = {
    "named [N,1] floats": [(f"f{i}", TensorProto.FLOAT, [None, 1]) for i in range(5)],
    "mixed types and ranks": [
        ("a", TensorProto.FLOAT, [None, 1]),
        ("b", TensorProto.DOUBLE, [None]),
        ("c", TensorProto.INT64, [None, 1]),
        ("d", TensorProto.INT32, [None]),
    ],
    "named [N] and [N,1] floats": [
        ("a", TensorProto.FLOAT, [None]),
        ("b", TensorProto.FLOAT, [None, 1]),
        ("c", TensorProto.FLOAT, [None]),
    ],
    "one wide input": [("x", TensorProto.FLOAT, [None, 6])],
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_row_scores_match_the_batch_path_and_session_run(layout: str, tmp_path: Path) -> None:
    model = OnnxModel(_weighted_sum_model(tmp_path / "m.onnx", LAYOUTS[layout]))
    width = len(model.feature_names)
    rows = np.round(np.random.default_rng(1).random((20, width), dtype=np.float32) * 10)
    one_by_one = np.array([model.predict(rows[i : i + 1])[0] for i in range(len(rows))])
    batch = model.predict(rows)
    expected = rows.astype(np.float64) @ np.arange(1, width + 1, dtype=np.float64)
    np.testing.assert_allclose(one_by_one, batch, rtol=0, atol=0)
    np.testing.assert_allclose(one_by_one, expected, rtol=1e-6)
    # A later row leaves nothing of an earlier one behind in the shared buffers.
    assert model.predict(np.zeros((1, width), dtype=np.float32))[0] == 0.0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_predict_rows_scores_what_one_row_at_a_time_scores(layout: str, tmp_path: Path) -> None:
    model = OnnxModel(_weighted_sum_model(tmp_path / "m.onnx", LAYOUTS[layout]))
    width = len(model.feature_names)
    rng = np.random.default_rng(2)
    for n in (0, 1, 2, 7, MAX_BOUND_ROWS, MAX_BOUND_ROWS + 1):  # the last: predict's path
        rows = (np.round(rng.random((n, width)) * 10) + 0.25).tolist()
        assert model.predict_rows(rows) == [model.predict_one(r) for r in rows], n
    # A later batch of the same size reuses the buffers and leaves nothing behind.
    assert model.predict_rows([[0.0] * width] * 7) == [0.0] * 7


def test_predict_rows_refuses_a_value_that_is_not_a_number(tmp_path: Path) -> None:
    model = OnnxModel(_weighted_sum_model(tmp_path / "m.onnx", LAYOUTS["named [N,1] floats"]))
    with pytest.raises(ValueError, match="could not convert"):
        model.predict_rows([[1.0] * 5, [1.0, 2.0, "x", 4.0, 5.0]])  # type: ignore[list-item]
    assert model.predict_rows([[1.0] * 5, [2.0] * 5]) == [15.0, 30.0]


def test_one_row_scoring_from_many_threads_keeps_rows_apart(tmp_path: Path) -> None:
    model = OnnxModel(_weighted_sum_model(tmp_path / "m.onnx", LAYOUTS["named [N,1] floats"]))
    errors: list[str] = []

    def score(k: int) -> None:
        row = np.full((1, 5), float(k), dtype=np.float32)
        for _ in range(300):
            got = model.predict(row)[0]
            if got != 15.0 * k:  # (1+2+3+4+5) * k
                errors.append(f"thread {k} got {got}")

    threads = [threading.Thread(target=score, args=(k,)) for k in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
