"""An ONNX Runtime session tuned for single-row latency, and the signature it expects.

One intra-op and one inter-op thread, sequential execution, all graph optimisations: a single
row of a tree ensemble is microseconds of work, and thread hand-offs would cost more than the
work itself (measured in benchmarks/). Concurrency comes from replicas, not threads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    onnx_type: str
    shape: tuple[int | str | None, ...]

    @property
    def width(self) -> int:
        """Columns this input takes per row (1 for [N, 1] or [N])."""
        last = self.shape[-1] if len(self.shape) > 1 else 1
        return last if isinstance(last, int) else 1


class ModelError(Exception):
    """The model could not be loaded or does not fit the configured features."""


class OnnxModel:
    """Scores rows: an [n, k] float matrix whose columns follow `feature_names`."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"ONNX Runtime cannot load {path}: {e}") from e
        self.inputs = [
            TensorSpec(i.name, i.type, tuple(i.shape)) for i in self.session.get_inputs()
        ]
        outputs = self.session.get_outputs()
        self.output_name = next((o.name for o in outputs if o.name == "score"), outputs[0].name)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.declared_features: list[str] | None = (
            json.loads(meta["rtml.features"]) if "rtml.features" in meta else None
        )
        for spec in self.inputs:
            if spec.onnx_type not in _NUMPY:
                raise ModelError(f"input {spec.name!r} has unsupported type {spec.onnx_type}")

    @property
    def feature_names(self) -> list[str]:
        """One name per column: the named inputs, or the declared order of a single wide input."""
        if len(self.inputs) == 1 and self.inputs[0].width > 1:
            if not self.declared_features:
                raise ModelError(
                    f"the model's single input {self.inputs[0].name!r} has "
                    f"{self.inputs[0].width} columns but no 'rtml.features' metadata naming them"
                )
            return list(self.declared_features)
        return [i.name for i in self.inputs]

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Scores for each row of an [n, k] float32 matrix."""
        feed: dict[str, np.ndarray]
        if len(self.inputs) == 1:
            spec = self.inputs[0]
            feed = {spec.name: rows.astype(_NUMPY[spec.onnx_type], copy=False)}
        else:
            feed = {
                spec.name: rows[:, i : i + 1].astype(_NUMPY[spec.onnx_type], copy=False)
                for i, spec in enumerate(self.inputs)
            }
        (out,) = self.session.run([self.output_name], feed)
        scores = np.asarray(out, dtype=np.float64)
        if scores.ndim == 2:
            scores = scores[:, -1]
        return scores.reshape(-1)

    def warmup(self, requests: int, rng_seed: int = 0) -> None:
        """Synthetic predictions so the first real request pays no lazy initialisation."""
        rng = np.random.default_rng(rng_seed)
        width = len(self.feature_names)
        for _ in range(requests):
            self.predict(rng.random((1, width), dtype=np.float32))
