"""Making and measuring `rtml optimize`'s candidates with ONNX Runtime.

- `graph`: ONNX Runtime's offline graph optimization at ORT_ENABLE_EXTENDED, saved through
  `SessionOptions.optimized_model_filepath`. Not ORT_ENABLE_ALL: its layout transformations
  (NCHWc) are for the CPU they ran on, and ONNX Runtime warns that such a file belongs to that
  machine; an artifact is built once and served on any node. The runtime applies every level
  online at load anyway (OnnxModel), on the node that serves.
- `int8-dynamic`: `quantize_dynamic` (INT8 weights, activations quantized per call), and
- `int8-static`: `quantize_static` (QDQ, INT8 weights and activations, MinMax ranges from the
  calibration rows), both only on QUANTIZABLE_OPS and on the model as it is. Not after
  `quant_pre_process`, which ONNX Runtime suggests: on a scikit-learn MLP exported by skl2onnx
  (a Scaler of ai.onnx.ml before the MatMuls) its output made quantize_dynamic fail ("Unable to
  find data type for weight_name") and quantize_static quantize the weights only.

Every candidate is scored with the runtime's own OnnxModel, so what is measured is what serves:
the same session options, output choice and one-row IOBinding path.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    quantize_dynamic,
    quantize_static,
)

from rtml.optimize import (
    INT8_METHODS,
    QUANTIZABLE_OPS,
    Accuracy,
    Candidate,
    Latency,
    Metric,
    accuracy_loss,
    accuracy_of,
    quantizable_nodes,
    quantization_node_count,
)
from rtml_runtime.onnx_model import MAX_BOUND_ROWS, NUMPY_TYPES, ModelError, OnnxModel

Progress = Callable[[str], None]
GRAPH_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
CALIBRATION_BATCH = 64
# /predict_batch binds batches of up to this many rows; a score's batch drift is measured at it.
DRIFT_BATCH = MAX_BOUND_ROWS


class OptimizeError(Exception):
    """The model or the data cannot be optimized as asked; the message says why."""


@dataclass(frozen=True)
class Rows:
    """The data's rows in the model's column order (float64, NaN where missing) and labels."""

    x: np.ndarray
    labels: np.ndarray | None


@dataclass(frozen=True)
class Settings:
    metric: Metric
    methods: tuple[str, ...]
    runs: int
    warmup: int
    columns: list[str] | None  # the Model's spec.features.columns
    output: tuple[str | None, int | None]  # the Model's spec.output


@dataclass(frozen=True)
class Outcome:
    quantizable: dict[str, int]
    original_accuracy: Accuracy
    original_latency: Latency
    candidates: list[Candidate]
    artifacts: dict[str, bytes]  # method -> the candidate's bytes, for the measured ones


# ---------------------------------------------------------------- data


def read_rows(path: Path, columns: Sequence[str], label: str | None) -> Rows:
    """The model's input columns (and the label) of a Parquet file."""
    try:
        import pyarrow.parquet as pq  # the examples' and Feast's dependency; only read here
    except ImportError as e:
        raise OptimizeError(f"reading {path} needs pyarrow installed") from e
    try:
        schema = pq.read_schema(path)
    except Exception as e:
        raise OptimizeError(f"{path} is not a Parquet file ONNX rows can be read from: {e}") from e
    wanted = [*columns, *([label] if label else [])]
    missing = [c for c in wanted if c not in schema.names]
    if missing:
        raise OptimizeError(
            f"{path} has no column {', '.join(repr(c) for c in missing)}; --data needs one column "
            "per model input (named as the model's features)"
            + (f" and the --label column {label!r}" if label in missing else "")
        )
    table = pq.read_table(path, columns=wanted)

    def numbers(column: str) -> np.ndarray:
        return np.asarray(table.column(column).to_numpy(zero_copy_only=False), np.float64)

    try:
        x = np.column_stack([numbers(c) for c in columns])
    except (TypeError, ValueError) as e:
        raise OptimizeError(f"{path}: the model's input columns must be numeric ({e})") from e
    labels = None
    if label:
        if empty := table.column(label).null_count:
            raise OptimizeError(f"--label column {label!r} of {path} has {empty} empty values")
        raw = table.column(label).to_numpy(zero_copy_only=False)
        values = set(np.asarray(raw).tolist())
        if not values <= {0, 1} or len(values) != 2:  # True == 1, False == 0
            raise OptimizeError(
                f"--label column {label!r} of {path} must hold both classes of a binary label "
                f"(0/1 or false/true); it holds {sorted(map(str, values))[:5]}"
            )
        labels = np.asarray(raw).astype(bool)
    return Rows(x=x, labels=labels)


# ---------------------------------------------------------------- candidates


def op_types(data: bytes) -> list[tuple[str, str]]:
    """(domain, op_type) of the main graph's nodes, in order."""
    graph = onnx.load_model_from_string(data).graph
    return [(n.domain, n.op_type) for n in graph.node]


@contextmanager
def _quiet() -> Iterator[None]:
    """The quantizers log advice through the root logger and ONNX Runtime's own: not ours to
    print (the report says what was done)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        root.setLevel(level)


def _with_metadata(original: bytes, made: bytes) -> bytes:
    """`made` carrying every metadata property of the original (rtml.features above all)."""
    source = onnx.load_model_from_string(original)
    model = onnx.load_model_from_string(made)
    have = {p.key for p in model.metadata_props}
    lost = {p.key: p.value for p in source.metadata_props if p.key not in have}
    if not lost:
        return made
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **lost})
    return bytes(model.SerializeToString())


def graph_optimized(data: bytes, workdir: Path) -> bytes:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = GRAPH_LEVEL
    opts.optimized_model_filepath = str(workdir / "graph.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return _with_metadata(data, (workdir / "graph.onnx").read_bytes())


class _Calibration(CalibrationDataReader):  # type: ignore[misc]  # untyped base
    """The calibration rows as the model's feeds, a batch at a time."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def feeds(model: OnnxModel, x: np.ndarray, batch: int) -> list[dict[str, np.ndarray]]:
    """Rows of `x` (model column order) as the model's input feeds, `batch` rows each."""
    inputs = model.inputs
    out: list[dict[str, np.ndarray]] = []
    for start in range(0, len(x), batch):
        rows = x[start : start + batch]
        if len(inputs) == 1 and inputs[0].width > 1:
            out.append({inputs[0].name: rows.astype(NUMPY_TYPES[inputs[0].dtype])})
            continue
        out.append(
            {
                spec.name: (rows[:, i] if len(spec.shape) == 1 else rows[:, i : i + 1]).astype(
                    NUMPY_TYPES[spec.dtype]
                )
                for i, spec in enumerate(inputs)
            }
        )
    return out


def quantized(
    method: str, data: bytes, calibration: list[dict[str, np.ndarray]], workdir: Path
) -> bytes:
    """The model quantized by `method` (int8-dynamic or int8-static)."""
    source, out = workdir / "original.onnx", workdir / f"{method}.onnx"
    source.write_bytes(data)
    with _quiet():
        if method == "int8-dynamic":
            quantize_dynamic(str(source), str(out), op_types_to_quantize=list(QUANTIZABLE_OPS))
        else:
            quantize_static(
                str(source),
                str(out),
                _Calibration(calibration),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZABLE_OPS),
            )
    return _with_metadata(data, out.read_bytes())


def make_candidates(
    data: bytes,
    original: OnnxModel,
    calibration_x: np.ndarray,
    methods: Sequence[str],
    progress: Progress,
) -> tuple[dict[str, int], dict[str, bytes], list[Candidate]]:
    """(quantizable nodes, the candidates' bytes, the ones that were skipped or failed)."""
    before = op_types(data)
    quantizable = quantizable_nodes(before)
    made: dict[str, bytes] = {}
    dropped: list[Candidate] = []
    with tempfile.TemporaryDirectory(prefix="rtml-optimize-") as tmp:
        workdir = Path(tmp)
        for method in methods:
            if method in INT8_METHODS and not quantizable:
                note = f"no quantizable operators ({', '.join(QUANTIZABLE_OPS)})"
                dropped.append(Candidate(method, "skipped", note))
                continue
            progress(f"making {method}")
            try:
                if method == "graph":
                    blob = graph_optimized(data, workdir)
                else:
                    calibration = (
                        feeds(original, calibration_x, CALIBRATION_BATCH)
                        if method == "int8-static"
                        else []
                    )
                    blob = quantized(method, data, calibration, workdir)
            except Exception as e:
                dropped.append(Candidate(method, "failed", f"{method} could not be made: {e}"))
                continue
            after = op_types(blob)
            if method == "graph" and after == before:
                note = f"ONNX Runtime rewrote no node at {GRAPH_LEVEL.name}"
                dropped.append(Candidate(method, "skipped", note, size_bytes=len(blob)))
                continue
            if method in INT8_METHODS and quantization_node_count(after) == 0:
                nodes = ", ".join(f"{n} {op}" for op, n in quantizable.items())
                note = f"the quantizer left all of the model's {nodes} nodes in float"
                dropped.append(Candidate(method, "skipped", note, size_bytes=len(blob)))
                continue
            made[method] = blob
    return quantizable, made, dropped


# ---------------------------------------------------------------- measuring


def load(data: bytes, name: str, settings: Settings) -> OnnxModel:
    return OnnxModel(
        Path(name), threads=1, data=data, columns=settings.columns, output=settings.output
    )


def load_original(data: bytes, name: str, settings: Settings) -> tuple[OnnxModel, list[str]]:
    """The original as the runtime loads it, and its columns (the names --data must have)."""
    try:
        model = load(data, name, settings)
        return model, model.feature_names
    except ModelError as e:
        raise OptimizeError(str(e)) from e


def scores(model: OnnxModel, rows: Sequence[Sequence[float]]) -> np.ndarray:
    """The model's score for each row scored alone, as /predict scores it.

    Not in batches: dynamic quantization computes the activations' range per call over the
    whole input, so an INT8 model's score for a row depends on the rows beside it (batch_drift
    measures by how much); the float models score the same either way."""
    return np.array([model.predict_one(row) for row in rows], dtype=np.float64)


def batch_drift(model: OnnxModel, x: np.ndarray, alone: np.ndarray) -> float:
    """The largest difference between a row's score in a batch of DRIFT_BATCH rows (what
    /predict_batch computes) and its score alone."""
    batched = np.concatenate(
        [model.predict(x[i : i + DRIFT_BATCH]) for i in range(0, len(x), DRIFT_BATCH)]
    )
    return float(np.abs(batched - alone).max()) if len(x) else 0.0


def measure_latency(
    models: Mapping[str, OnnxModel],
    rows: Sequence[Sequence[float]],
    runs: int,
    warmup: int,
    progress: Progress,
) -> dict[str, Latency]:
    """Single-row latency of every model, interleaved: round i scores held-out row i with each
    model in turn, the order rotating every round, so drift on a shared machine (another
    process, frequency changes) lands on all of them alike. Every model gets `runs` calls."""
    names = list(models)
    for model in models.values():
        for i in range(warmup):
            model.predict_one(rows[i % len(rows)])
    samples = {name: np.empty(runs, dtype=np.int64) for name in names}
    predict = [models[name].predict_one for name in names]
    clock = time.perf_counter_ns
    quarter = max(1, runs // 4)
    for i in range(runs):
        row = rows[i % len(rows)]
        for j in range(len(names)):
            k = (i + j) % len(names)
            started = clock()
            predict[k](row)
            samples[names[k]][i] = clock() - started
        if (i + 1) % quarter == 0 and i + 1 < runs:
            progress(f"latency: {i + 1:,} of {runs:,} rounds")
    out = {}
    for name, ns in samples.items():
        p50, p99 = np.percentile(ns, [50, 99]) / 1e6
        out[name] = Latency(p50_ms=float(p50), p99_ms=float(p99), runs=runs)
    return out


def _non_finite(values: np.ndarray) -> int:
    return int((~np.isfinite(values)).sum())


def optimize_model(
    data: bytes,
    original: OnnxModel,
    rows: Rows,
    calibration: np.ndarray,
    held_out: np.ndarray,
    settings: Settings,
    progress: Progress,
) -> Outcome:
    """Make every candidate, score it on the held-out rows, time it against the original."""
    x = rows.x[held_out]
    labels = rows.labels[held_out] if rows.labels is not None else None
    quantizable, made, dropped = make_candidates(
        data, original, rows.x[calibration], settings.methods, progress
    )
    progress(f"scoring {len(x):,} held-out rows, one at a time")
    listed = x.tolist()
    base = scores(original, listed)
    if bad := _non_finite(base):
        raise OptimizeError(f"the original model scores {bad} of {len(x)} held-out rows as NaN")
    original_accuracy = accuracy_of(base, base, labels)
    measured: dict[str, Candidate] = {}
    models: dict[str, OnnxModel] = {"original": original}
    for method, blob in made.items():
        try:
            model = load(blob, method, settings)
        except ModelError as e:
            dropped.append(Candidate(method, "failed", str(e), size_bytes=len(blob)))
            continue
        if model.feature_names != original.feature_names:
            note = "its inputs differ from the original's, so it cannot replace it"
            dropped.append(Candidate(method, "failed", note, size_bytes=len(blob)))
            continue
        got = scores(model, listed)
        if bad := _non_finite(got):
            note = f"it scores {bad} of {len(x)} held-out rows as NaN"
            dropped.append(Candidate(method, "failed", note, size_bytes=len(blob)))
            continue
        accuracy = accuracy_of(got, base, labels)
        loss = accuracy_loss(settings.metric, original_accuracy, accuracy)
        quantization_nodes = quantization_node_count(op_types(blob))
        measured[method] = Candidate(
            method,
            "measured",
            size_bytes=len(blob),
            quantization_nodes=quantization_nodes,
            accuracy=accuracy,
            loss=loss,
            batch_drift=batch_drift(model, x, got),
        )
        models[method] = model
    progress(
        f"latency: {settings.runs:,} single-row runs of each of {', '.join(models)}, interleaved"
    )
    latency = measure_latency(models, listed, settings.runs, settings.warmup, progress)
    by_method = {c.method: c for c in dropped}
    for method, candidate in measured.items():
        by_method[method] = replace(candidate, latency=latency[method])
    ordered = [by_method[m] for m in settings.methods if m in by_method]
    return Outcome(
        quantizable=quantizable,
        original_accuracy=original_accuracy,
        original_latency=latency["original"],
        candidates=ordered,
        artifacts={m: made[m] for m in measured},
    )
