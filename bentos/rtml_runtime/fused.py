"""The primary model and the ensemble's members that read the same inputs, as one ONNX Runtime
session: one call scores them all (docs/decisions.md, "The ensemble").

Each model's own call costs the same fixed work whatever the model: 30 values written into its
bound input buffers, ONNX Runtime's run with its per-node dispatch, the output read back. For
the fraud example's logistic member that fixed work is nearly all of its 14.4 µs in line; in
one graph with the primary it adds 4.4 µs (benchmarks/ensemble_cost.py, docs/decisions.md).
Built at load from the models' own bytes: the default domain's opset is raised to the highest
of them with ONNX's version converter, every member's names but the shared inputs get a
prefix, and the outputs are the score each model's `spec.output` chose. The fused session is
checked against the models one by one on random rows before it is used; any difference, and
it is not.

What it does not change: each model keeps its own breaker, call counters and in-line streak
(ensemble.py uses the fused call only when every breaker is closed and every member has
proved fast, and falls back to the separate calls when it raises).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np

from rtml_runtime.onnx_model import (
    OnnxModel,
    bind_one_row,
    fill_row,
    output_scores,
    session_options,
)

log = logging.getLogger("rtml.runtime")
CHECK_ROWS = 64  # random rows the fused session must score as the models do, one by one
PREFIX = "rtml_member{}/"
# The fused session holds a second copy of every model's weights, for a saving of ~15 µs a
# request: worth it beside small models (the fraud example's are 60 kB), noise beside a model
# whose own run takes milliseconds. Above this the models are scored one by one.
MAX_FUSED_BYTES = 8 << 20


def fusable(primary: OnnxModel, members: Sequence[OnnxModel]) -> bool:
    """Whether every member reads exactly the primary's inputs, in the same columns, and the
    models together are small enough to be worth a second copy of their weights."""
    models = [primary, *members]
    sizes = [len(m.model_bytes) for m in models if m.model_bytes is not None]
    return (
        bool(members)
        and len(sizes) == len(models)
        and sum(sizes) <= MAX_FUSED_BYTES
        and all(m.inputs == primary.inputs for m in members)
        and all(m.feature_names == primary.feature_names for m in members)
    )


class FusedModels:
    """One session scoring `models` (the primary first) on one row."""

    def __init__(self, models: Sequence[OnnxModel], proto_bytes: bytes) -> None:
        import onnxruntime as ort

        self.models = tuple(models)
        self.session = ort.InferenceSession(
            proto_bytes, session_options(1), providers=["CPUExecutionProvider"]
        )
        first = self.models[0]
        self._binding, self._row_views = bind_one_row(ort, self.session, first.inputs)
        self.output_names = [
            m.output_name if i == 0 else PREFIX.format(i) + m.output_name
            for i, m in enumerate(self.models)
        ]
        for name in self.output_names:
            self._binding.bind_output(name)
        self._columns = [m.output_column for m in self.models]
        self._wide = first.wide
        self._lock = threading.Lock()

    def predict_one(self, row: Sequence[float]) -> list[float]:
        """Every model's score of one row, in the models' order."""
        with self._lock:
            fill_row(self._row_views, self._wide, row)
            self.session.run_with_iobinding(self._binding)
            outs = zip(self._binding.get_outputs(), self._columns, strict=True)
            return [float(output_scores(o.numpy(), c)[0]) for o, c in outs]


def _merged_bytes(models: Sequence[OnnxModel]) -> bytes:
    import onnx
    from onnx import compose, helper, version_converter

    protos = []
    for m in models:
        assert m.model_bytes is not None
        proto = onnx.load_model_from_string(m.model_bytes)
        if len(proto.functions):
            raise ValueError(f"{m.path} defines local functions")
        protos.append(proto)
    opsets: dict[str, int] = {}
    for p in protos:
        for o in p.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    default = opsets.get("", opsets.get("ai.onnx", 0))
    for i, p in enumerate(protos):
        own = {o.domain: o.version for o in p.opset_import}
        if own.get("", own.get("ai.onnx", default)) != default:
            protos[i] = version_converter.convert_version(p, default)
        if i:
            protos[i] = compose.add_prefix(protos[i], PREFIX.format(i), rename_inputs=False)
    graphs = [p.graph for p in protos]
    outputs = []
    for i, (m, g) in enumerate(zip(models, graphs, strict=True)):
        name = m.output_name if i == 0 else PREFIX.format(i) + m.output_name
        outputs.append(next(o for o in g.output if o.name == name))
    graph = helper.make_graph(
        [n for g in graphs for n in g.node],
        "rtml_fused",
        list(graphs[0].input),
        outputs,
        initializer=[t for g in graphs for t in g.initializer],
        value_info=[v for g in graphs for v in g.value_info],
        sparse_initializer=[t for g in graphs for t in g.sparse_initializer],
    )
    merged = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
        ir_version=max(p.ir_version for p in protos),
    )
    onnx.checker.check_model(merged)
    return merged.SerializeToString()  # type: ignore[no-any-return]


def _agrees(fused: FusedModels, rows: int = CHECK_ROWS) -> str | None:
    """None when the fused session scores `rows` random rows as each model does alone; else
    the first difference, in words."""
    rng = np.random.default_rng(0)
    width = len(fused.models[0].feature_names)
    for _ in range(rows):
        row = (rng.random(width, dtype=np.float32) * 4 - 1).tolist()
        together = fused.predict_one(row)
        alone = [m.predict_one(row) for m in fused.models]
        if not np.allclose(together, alone, rtol=1e-6, atol=1e-7, equal_nan=True):
            return f"scores {together} together, {alone} alone"
    return None


def fuse(models: Sequence[OnnxModel]) -> FusedModels | None:
    """The fused session of `models` (the primary first), or None (logged) when they cannot
    be merged or the merged graph does not score as they do. The check's rows warm it up."""
    names = [str(m.path) for m in models]
    try:
        fused = FusedModels(models, _merged_bytes(models))
    except Exception as e:  # a graph ONNX cannot merge or convert: score them one by one
        log.info("ensemble models not fused: %s", e, extra={"models": names})
        return None
    difference = _agrees(fused)
    if difference is not None:
        log.warning("ensemble models not fused: %s", difference, extra={"models": names})
        return None
    log.info("ensemble models fused into one session", extra={"models": names})
    return fused


def release_bytes(models: Sequence[OnnxModel]) -> None:
    """Drop the bytes kept for fusing: the sessions hold what they need."""
    for m in models:
        m.model_bytes = None
