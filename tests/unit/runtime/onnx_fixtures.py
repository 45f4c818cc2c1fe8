"""A tiny real ONNX model for runtime unit tests: score = sigmoid(sum of inputs)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import onnx
from onnx import TensorProto, helper


def write_sum_model(
    path: Path,
    inputs: list[str],
    opset: int = 17,
    *,
    widths: Mapping[str, int] | None = None,
    bias: float = 0.0,
) -> Path:
    """Named [N, 1] float inputs -> Concat -> ReduceSum (+ bias) -> Sigmoid -> `score` [N, 1].

    `widths` makes some inputs [N, k] instead (a shape the signature check refuses beside others).
    `bias` gives a model of the same signature whose scores differ (an experiment's candidate).
    """
    widths = widths or {}
    graph_inputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, widths.get(n, 1)])
        for n in inputs
    ]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    shift = helper.make_tensor("bias", TensorProto.FLOAT, [1], [bias])
    nodes = [
        helper.make_node("Concat", inputs, ["x"], axis=1),
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
        helper.make_node("Add", ["s", "bias"], ["t"]),
        helper.make_node("Sigmoid", ["t"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "sum",
        graph_inputs,
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        initializer=[axes, shift],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path
