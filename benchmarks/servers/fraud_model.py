"""The one model every anchor serves, loaded the same way the rtml runtime loads it.

Every server (and the raw floor) uses the same ONNX Runtime settings as the runtime's
`OnnxModel` (one intra-op and one inter-op thread, sequential, all graph optimisations), so the
comparison is between the layers around `session.run`, not between thread-pool settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import onnxruntime as ort


def load_session(path: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


class Scorer:
    """Scores one row given as {input name: number}; the model has one [N, 1] input per feature."""

    def __init__(self, path: str | None = None) -> None:
        self.session = load_session(path or os.environ["BENCH_MODEL"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.output = "score"

    def feed(self, values: Mapping[str, float]) -> dict[str, np.ndarray]:
        return {n: np.array([[values[n]]], dtype=np.float32) for n in self.names}

    def score(self, values: Mapping[str, float]) -> float:
        (out,) = self.session.run([self.output], self.feed(values))
        return float(np.asarray(out).reshape(-1)[-1])
