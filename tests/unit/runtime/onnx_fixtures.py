"""A tiny real ONNX model for runtime unit tests: score = sigmoid(sum of inputs)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import onnx
from onnx import TensorProto, helper


def write_sum_model(
    path: Path, inputs: list[str], opset: int = 17, *, widths: Mapping[str, int] | None = None
) -> Path:
    """Named [N, 1] float inputs -> Concat -> ReduceSum -> Sigmoid -> `score` [N, 1].

    `widths` makes some inputs [N, k] instead (a shape the signature check refuses beside others).
    """
    widths = widths or {}
    graph_inputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, widths.get(n, 1)])
        for n in inputs
    ]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Concat", inputs, ["x"], axis=1),
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
        helper.make_node("Sigmoid", ["s"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "sum",
        graph_inputs,
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        initializer=[axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path
