"""Challengers for the fraud model, for Experiments: each has the champion's exact signature.

build.py writes them next to model.onnx:
- candidate.onnx: trees retrained with another seed and more estimators — a good challenger;
- slow.onnx: candidate.onnx plus a genuinely heavier branch, a deep tanh MLP over the features
  (tied weights, so the file stays small while every row costs ~`depth` dense layers of work);
  its result is added times zero, so only its latency differs, not its scores;
- erroring.onnx: candidate.onnx that fails at inference whenever a row's `amount` is over 10
  (any real transaction; the runtime's warm-up rows are in [0, 1) so it loads and warms up);
- shifted.onnx: candidate.onnx with every score raised by 0.3 (clipped to 1): a model whose
  outputs moved, for the `scoreMeanShift` gate.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SLOW_WIDTH = 2048
SLOW_DEPTH = 400  # ~1.7 G multiply-adds per row: ~50 ms on this machine, whatever its threads
SHIFT = 0.3
ERROR_AMOUNT = 10.0


def _rewired(model: onnx.ModelProto, name: str) -> tuple[onnx.ModelProto, onnx.GraphProto]:
    """A copy whose graph computes the original score as `score_base`; callers add the nodes
    that produce `score` from it."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    graph.name = name
    for node in graph.node:
        node.output[:] = ["score_base" if o == "score" else o for o in node.output]
    return out, graph


def _checked(model: onnx.ModelProto) -> onnx.ModelProto:
    onnx.checker.check_model(model, full_check=True)
    return model


def slow(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    out, g = _rewired(model, "fraud_slow")
    rng = np.random.default_rng(seed)
    width = len(g.input)
    first = rng.normal(0, 1 / np.sqrt(width), (width, SLOW_WIDTH)).astype(np.float32)
    tied = rng.normal(0, 1 / np.sqrt(SLOW_WIDTH), (SLOW_WIDTH, SLOW_WIDTH)).astype(np.float32)
    g.initializer.extend(
        [
            numpy_helper.from_array(first, "slow_w0"),
            numpy_helper.from_array(tied, "slow_w"),
            numpy_helper.from_array(np.zeros((), np.float32), "slow_zero"),
        ]
    )
    nodes = [
        helper.make_node("MatMul", ["features", "slow_w0"], ["slow_m0"]),
        helper.make_node("Tanh", ["slow_m0"], ["slow_h0"]),
    ]
    for i in range(1, SLOW_DEPTH + 1):
        nodes += [
            helper.make_node("MatMul", [f"slow_h{i - 1}", "slow_w"], [f"slow_m{i}"]),
            helper.make_node("Tanh", [f"slow_m{i}"], [f"slow_h{i}"]),
        ]
    nodes += [
        helper.make_node(
            "ReduceMean", [f"slow_h{SLOW_DEPTH}"], ["slow_mean"], axes=[1], keepdims=0
        ),
        helper.make_node("Mul", ["slow_mean", "slow_zero"], ["slow_nothing"]),
        helper.make_node("Add", ["score_base", "slow_nothing"], ["score"]),
    ]
    g.node.extend(nodes)
    return _checked(out)


def erroring(model: onnx.ModelProto, amount_input: str = "amount") -> onnx.ModelProto:
    out, g = _rewired(model, "fraud_erroring")
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array(ERROR_AMOUNT, np.float32), "err_limit"),
            numpy_helper.from_array(np.array([7, -1], np.int64), "err_shape"),
        ]
    )
    # A shape no row count of 1 can take: ONNX Runtime raises at inference.
    broken = helper.make_graph(
        [
            helper.make_node("Reshape", ["score_base", "err_shape"], ["err_reshaped"]),
            helper.make_node("ReduceSum", ["err_reshaped"], ["err_out"], keepdims=0),
        ],
        "fails",
        [],
        [helper.make_tensor_value_info("err_out", TensorProto.FLOAT, None)],
    )
    fine = helper.make_graph(
        [helper.make_node("Identity", ["score_base"], ["ok_out"])],
        "passes",
        [],
        [helper.make_tensor_value_info("ok_out", TensorProto.FLOAT, None)],
    )
    g.node.extend(
        [
            helper.make_node("ReduceMax", [amount_input], ["err_max"], keepdims=0),
            helper.make_node("Greater", ["err_max", "err_limit"], ["err_cond"]),
            helper.make_node("If", ["err_cond"], ["score"], then_branch=broken, else_branch=fine),
        ]
    )
    return _checked(out)


def shifted(model: onnx.ModelProto, shift: float = SHIFT) -> onnx.ModelProto:
    out, g = _rewired(model, "fraud_shifted")
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array(shift, np.float32), "shift"),
            numpy_helper.from_array(np.array(0.0, np.float32), "shift_lo"),
            numpy_helper.from_array(np.array(1.0, np.float32), "shift_hi"),
        ]
    )
    g.node.extend(
        [
            helper.make_node("Add", ["score_base", "shift"], ["shift_raised"]),
            helper.make_node("Clip", ["shift_raised", "shift_lo", "shift_hi"], ["score"]),
        ]
    )
    return _checked(out)
