"""An ONNX Runtime session tuned for single-row latency, and the signature it expects.

One intra-op and one inter-op thread, sequential execution, all graph optimisations: a single
row of a tree ensemble is microseconds of work, and thread hand-offs would cost more than the
work itself (measured in benchmarks/). Concurrency comes from replicas, not threads.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtml.api.signature import InputSpec, Mismatch, OutputChoice, choose_output, is_zipmap
from rtml.onnx_inputs import DECLARED_FEATURES, external_data_files, graph_outputs, unzip_output

NUMPY_TYPES = {  # ONNX input type -> the numpy type rtml feeds it
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


MAX_BOUND_ROWS = 64  # predict_rows binds buffers for batches of up to this many rows


class ModelError(Exception):
    """The model could not be loaded or does not fit the configured features."""


def _load_failure(path: Path, data: bytes, error: Exception) -> str:
    """Why ONNX Runtime would not load the model, in a sentence; external data named."""
    try:
        files = external_data_files(data)
    except Exception:
        files = []
    if files:
        return (
            f"{path} keeps tensors in external files ({', '.join(files)}), which its sha256 "
            "does not cover; rtml loads a model only from the bytes its digest covers. Save it "
            "as one file (onnx.save_model(model, path, save_as_external_data=False))"
        )
    return f"ONNX Runtime cannot load {path}: {error}"


def session_options(threads: int) -> Any:
    """One intra-op thread (or `threads`), one inter-op, sequential, every graph optimisation."""
    import onnxruntime as ort  # ~0.5 s: loaded with the model, off the import path

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


class OnnxModel:
    """Scores rows: an [n, k] float matrix whose columns follow `feature_names`."""

    def __init__(
        self,
        path: Path,
        threads: int = 1,
        data: bytes | None = None,
        sha256: str | None = None,
        columns: list[str] | None = None,
        output: tuple[str | None, int | None] = (None, None),
        keep_bytes: bool = False,
    ) -> None:
        """`data`: the model's bytes, already verified (the session is made from them, never
        from `path` again; `path` only names the model). Without it, `path` is read. `sha256`:
        the digest the caller checked `data` against, so the bytes are not hashed twice.
        `columns`: the Model's spec.features.columns (a single wide input's column names);
        `output`: its spec.output (name, column), the score (rtml.api.signature.choose_output).
        `keep_bytes`: keep the bytes the session was made from in `model_bytes` (for fusing an
        ensemble, fused.py, which drops them after)."""
        import onnxruntime as ort  # ~0.5 s: loaded with the model, off the import path

        opts = session_options(threads)
        # No custom-op library is ever registered: an op outside ONNX Runtime's own kernels
        # fails to load (with its name in the reason) instead of running a shared library.
        self.path = path
        if data is None:
            data = path.read_bytes()
        self.sha256 = sha256 or hashlib.sha256(data).hexdigest()
        try:
            self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(_load_failure(path, data, e)) from e
        self.inputs = [InputSpec(i.name, i.type, tuple(i.shape)) for i in self.session.get_inputs()]
        self.output_spec = output
        self.spec_columns = columns
        outputs = [InputSpec(o.name, o.type, tuple(o.shape)) for o in self.session.get_outputs()]
        if any(is_zipmap(o) for o in outputs):
            import onnx  # only for a ZipMap's class count, which its type does not carry

            outputs = graph_outputs(onnx.load_model_from_string(data))
        chosen: OutputChoice | Mismatch = choose_output(outputs, *output)
        if isinstance(chosen, Mismatch):
            raise ModelError(chosen.message)
        self.output_name, self.output_column = chosen.name, chosen.column
        if chosen.zipmap:
            # ONNX Runtime cannot bind a sequence of maps: score the probabilities it zips.
            data, self.output_name = unzip_output(data, chosen.name)
            self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        self.model_bytes: bytes | None = data if keep_bytes else None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.declared_features: list[str] | None = (
            json.loads(meta[DECLARED_FEATURES]) if DECLARED_FEATURES in meta else None
        )
        for spec in self.inputs:
            if spec.dtype not in NUMPY_TYPES:
                raise ModelError(f"input {spec.name!r} has unsupported type {spec.dtype}")
        # (input name, numpy type) in feed order, resolved once rather than per request.
        self._feed_types = [(spec.name, NUMPY_TYPES[spec.dtype]) for spec in self.inputs]
        self._ranks = [len(spec.shape) for spec in self.inputs]
        self._bind_one_row(ort)

    def _bind_one_row(self, ort: Any) -> None:
        """An IOBinding whose inputs are preallocated one-row buffers, bound once.

        Scoring one row then copies its values into the buffers and calls
        `run_with_iobinding`: 26 µs for the fraud example's 30 inputs where `session.run` with
        a feed dict took 86 µs, measured side by side (docs/runtime.md). `run` converts and
        validates every input of every call; a binding did that once. The buffers are shared,
        so one-row scoring holds a lock (uncontended on the event loop; warm-up runs in a
        worker thread while requests may already arrive).
        """
        self._binding, self._row_views = bind_one_row(ort, self.session, self.inputs)
        self._binding.bind_output(self.output_name)
        self.wide = len(self.inputs) == 1 and self.inputs[0].width > 1
        self._lock = threading.Lock()
        self._ort = ort
        # predict_rows' bindings by row count, made on first use (all inputs of one type only).
        self._batch_bindings: dict[int, tuple[Any, np.ndarray]] = {}
        dtypes = {dtype for _, dtype in self._feed_types}
        self._batch_dtype: Any = dtypes.pop() if len(dtypes) == 1 else None

    @property
    def feature_names(self) -> list[str]:
        """One name per column: the named inputs, or the declared order of a single wide input."""
        if len(self.inputs) == 1 and self.inputs[0].width > 1:
            names = self.spec_columns or self.declared_features
            if not names:
                raise ModelError(
                    f"the model's single input {self.inputs[0].name!r} has "
                    f"{self.inputs[0].width} columns, but neither spec.features.columns nor the "
                    "model's 'rtml.features' metadata names them"
                )
            return list(names)
        return [i.name for i in self.inputs]

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Scores for each row of an [n, k] float32 matrix."""
        if rows.shape[0] == 1:
            return np.array([self.predict_one(rows[0].tolist())])
        feed: dict[str, np.ndarray]
        if len(self._feed_types) == 1:
            name, dtype = self._feed_types[0]
            feed = {name: rows.astype(dtype, copy=False)}
        else:
            # An [N] input takes a column as a vector, an [N, 1] input as a one-column matrix.
            feed = {
                name: (rows[:, i] if rank == 1 else rows[:, i : i + 1]).astype(dtype, copy=False)
                for i, ((name, dtype), rank) in enumerate(
                    zip(self._feed_types, self._ranks, strict=True)
                )
            }
        (out,) = self.session.run([self.output_name], feed)
        return output_scores(out, self.output_column)

    def predict_rows(self, rows: Sequence[Sequence[float]] | np.ndarray) -> list[float]:
        """The scores of a few rows (values in `feature_names` order), in one model call.

        The one-row path's technique for a batch: preallocated buffers of `len(rows)` rows,
        bound once per row count (up to MAX_BOUND_ROWS) and filled by one numpy assignment
        straight from the lists. The fraud example's candidate (30 inputs), CPU time per call on
        the shared 2-core machine: 26 µs for 2 rows where `predict` (a feed dict of 30 column
        slices through `session.run`) took 81 µs, 215 µs against 335 µs for 64 rows
        (tests/unit/runtime/test_onnx_model.py checks that both score the same). Named inputs
        are the columns of one Fortran-order matrix, so each is a contiguous view of it.
        """
        n = len(rows)
        if n == 0:
            return []
        if n == 1:
            return [self.predict_one(rows[0])]
        if self._batch_dtype is None or not 1 < n <= MAX_BOUND_ROWS:
            return self.predict(np.array(rows, dtype=np.float64)).tolist()  # type: ignore[no-any-return]
        with self._lock:
            binding, buffer = self._batch_bindings.get(n) or self._bind_rows(n)
            buffer[:] = rows
            self.session.run_with_iobinding(binding)
            out = binding.get_outputs()[0].numpy()
        return output_scores(out, self.output_column).tolist()  # type: ignore[no-any-return]

    def _bind_rows(self, n: int) -> tuple[Any, np.ndarray]:
        width = self.inputs[0].width if self.wide else len(self.inputs)
        buffer: np.ndarray = np.zeros(
            (n, width), dtype=self._batch_dtype, order="C" if self.wide else "F"
        )
        binding = self.session.io_binding()
        from_numpy = self._ort.OrtValue.ortvalue_from_numpy
        if self.wide:
            binding.bind_ortvalue_input(self.inputs[0].name, from_numpy(buffer))
        else:
            for i, ((name, _), rank) in enumerate(zip(self._feed_types, self._ranks, strict=True)):
                view = buffer[:, i] if rank == 1 else buffer[:, i : i + 1]
                binding.bind_ortvalue_input(name, from_numpy(view))
        binding.bind_output(self.output_name)
        self._batch_bindings[n] = (binding, buffer)
        return binding, buffer

    def predict_one(self, row: Sequence[float]) -> float:
        """The score of one row, its values in `feature_names` order (NaN for a missing one)."""
        with self._lock:
            fill_row(self._row_views, self.wide, row)
            self.session.run_with_iobinding(self._binding)
            out = self._binding.get_outputs()[0].numpy()
        return float(output_scores(out, self.output_column)[0])

    def warmup(self, requests: int, rng_seed: int = 0) -> None:
        """Synthetic predictions so the first real request pays no lazy initialisation."""
        rng = np.random.default_rng(rng_seed)
        width = len(self.feature_names)
        for _ in range(requests):
            self.predict_one(rng.random(width, dtype=np.float32).tolist())


def bind_one_row(ort: Any, session: Any, inputs: Sequence[InputSpec]) -> tuple[Any, list[Any]]:
    """An IOBinding of `session` whose inputs are preallocated one-row buffers, and a flat
    view of each buffer to write a row into (fill_row). Outputs are the caller's to bind."""
    binding = session.io_binding()
    views: list[np.ndarray] = []
    for spec in inputs:
        shape = (1, spec.width) if len(spec.shape) == 2 else (1,)
        buffer: np.ndarray = np.zeros(shape, dtype=NUMPY_TYPES[spec.dtype])
        # The OrtValue shares the buffer's memory (CPU) and keeps a reference to it.
        binding.bind_ortvalue_input(spec.name, ort.OrtValue.ortvalue_from_numpy(buffer))
        views.append(buffer.reshape(-1))
    return binding, views


def fill_row(views: Sequence[np.ndarray], wide: bool, row: Sequence[float]) -> None:
    """One row's values into the buffers of bind_one_row (the caller holds their lock)."""
    if wide:
        views[0][:] = row
    else:
        for view, value in zip(views, row, strict=True):
            view[0] = value


def output_scores(out: Any, column: int | None = None) -> np.ndarray:
    """One float per row: column `column` of a [N, k] output (default: its last), or the
    output itself."""
    scores = np.asarray(out, dtype=np.float64)
    if scores.ndim == 2:
        scores = scores[:, -1 if column is None else column]
    return scores.reshape(-1)
