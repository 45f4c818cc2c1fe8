"""`rtml optimize`'s decisions, pure: how accurate a candidate is, whether it fits the budget,
which one wins, where it is written, and the report. No ONNX Runtime here (optimize_onnx.py
makes and measures the candidates; optimize_cli.py reads and writes files).

"Accuracy loss" (docs/optimize.md): with labels, the drop in ROC AUC on the held-out rows
(original's AUC minus the candidate's, in AUC units: 0.01 is one point); without them, the mean
absolute difference between the candidate's and the original's scores on the same rows. Both
score differences (max and mean) are always reported: thresholds in a decision read absolute
scores, which AUC (a ranking measure) does not see.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Metric = Literal["auc", "mean-abs-diff", "max-abs-diff"]
METRICS: tuple[Metric, ...] = ("auc", "mean-abs-diff", "max-abs-diff")
METRIC_TITLES: dict[Metric, str] = {
    "auc": "ROC AUC drop",
    "mean-abs-diff": "mean absolute score difference",
    "max-abs-diff": "max absolute score difference",
}
# The candidates, in the order they are made and listed.
METHODS = ("graph", "int8-dynamic", "int8-static")
INT8_METHODS = ("int8-dynamic", "int8-static")
# What INT8 quantization acts on: ONNX Runtime's quantizers turn these into integer kernels.
# Everything else (tree ensembles, linear classifiers of ai.onnx.ml, element-wise ops) stays
# float; quantizing only around them would add casts and gain nothing.
QUANTIZABLE_OPS = ("Conv", "Gemm", "MatMul")
# Nodes a quantizer writes; their presence is how a quantized model proves it changed.
QUANTIZATION_OPS = frozenset(
    {
        "QuantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "DynamicQuantizeMatMul",
        "QLinearMatMul",
        "QLinearConv",
        "QGemm",
    }
)

Status = Literal["measured", "skipped", "failed"]
DRIFT_NOTED = 1e-6  # float kernels for one row and for a batch agree closer than this
# Differences of p50 under this share between interleaved runs are noise on a shared machine:
# the fraud example's graph candidate runs the original's kernels and measured -2% to +1%.
SAME_SPEED = 0.05


@dataclass(frozen=True)
class Accuracy:
    """A model's scores on the held-out rows against the original's (and the labels)."""

    auc: float | None  # None without labels
    max_abs_diff: float
    mean_abs_diff: float


@dataclass(frozen=True)
class Latency:
    """Single-row scoring time through the runtime's OnnxModel, over `runs` calls."""

    p50_ms: float
    p99_ms: float
    runs: int


@dataclass(frozen=True)
class Candidate:
    """One way of optimizing the model and what was measured of it.

    `skipped`: the method does not apply (nothing to quantize, nothing rewritten); `failed`:
    the method raised or produced a model that does not load; `note` says which, in words.
    """

    method: str
    status: Status
    note: str = ""
    size_bytes: int | None = None
    quantization_nodes: int = 0  # nodes of QUANTIZATION_OPS in the candidate
    accuracy: Accuracy | None = None
    loss: float | None = None
    latency: Latency | None = None
    # The largest difference between a row's score in a batch (/predict_batch) and alone
    # (/predict): non-zero for dynamic quantization, whose activation ranges span the batch.
    batch_drift: float | None = None

    def within(self, budget: float) -> bool:
        return self.status == "measured" and self.loss is not None and self.loss <= budget


@dataclass(frozen=True)
class Report:
    """Everything `rtml optimize` measured and decided; its JSON is the `--json` document."""

    model: str
    version: str
    artifact: str  # the original file
    artifact_sha256: str
    verified: bool  # False: the Model allows an unverified artifact and names no sha256
    size_bytes: int
    data: str
    label: str | None
    calibration_rows: int
    held_out_rows: int
    seed: int
    metric: Metric
    max_accuracy_loss: float
    quantizable: dict[str, int]  # op type -> nodes, of QUANTIZABLE_OPS
    original_accuracy: Accuracy
    original_latency: Latency
    candidates: list[Candidate]
    winner: str | None = None
    written: dict[str, str] = field(default_factory=dict)  # path, sha256, uri, reports


# ---------------------------------------------------------------- accuracy


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a positive row outscores a negative one
    (ties count half). Mann-Whitney over average ranks; equals scikit-learn's roc_auc_score."""
    positive = np.asarray(labels).astype(bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs both classes among the labels")
    values = np.asarray(scores, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)  # 1-based, ties averaged
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def accuracy_of(scores: np.ndarray, original: np.ndarray, labels: np.ndarray | None) -> Accuracy:
    """The candidate's `scores` against the `original` model's on the same rows."""
    diff = np.abs(np.asarray(scores, np.float64) - np.asarray(original, np.float64))
    return Accuracy(
        auc=roc_auc(labels, scores) if labels is not None else None,
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_diff=float(diff.mean()) if diff.size else 0.0,
    )


def accuracy_loss(metric: Metric, original: Accuracy, candidate: Accuracy) -> float:
    """How much accuracy the candidate gives up; negative when it scores better."""
    if metric == "auc":
        if original.auc is None or candidate.auc is None:
            raise ValueError("the auc metric needs labels (--label)")
        return original.auc - candidate.auc
    return candidate.mean_abs_diff if metric == "mean-abs-diff" else candidate.max_abs_diff


def loss_words(metric: Metric, loss: float) -> str:
    return f"{METRIC_TITLES[metric]} {loss:.4g}"


# ---------------------------------------------------------------- what applies


def quantizable_nodes(op_types: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Nodes INT8 quantization can act on, by op type, from (domain, op_type) pairs."""
    counts = Counter(op for domain, op in op_types if domain in ("", "ai.onnx"))
    return {op: counts[op] for op in QUANTIZABLE_OPS if counts[op]}


def quantization_node_count(op_types: Iterable[tuple[str, str]]) -> int:
    return sum(1 for _, op in op_types if op in QUANTIZATION_OPS)


def nothing_to_quantize(quantizable: dict[str, int]) -> str:
    return (
        f"no quantizable operators ({', '.join(QUANTIZABLE_OPS)}); graph optimization only"
        if not quantizable
        else ""
    )


def split_rows(n: int, calibration_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, held-out) row indices: a seeded permutation, calibration rows first, so the
    same data and seed always give the same split and no row is in both."""
    if not 0 <= calibration_rows < n:
        raise ValueError(f"cannot take {calibration_rows} calibration rows out of {n}")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:calibration_rows]), np.sort(order[calibration_rows:])


def default_calibration_rows(n: int) -> int:
    """500 rows, or a quarter of the data when it is small: static quantization needs a few
    hundred rows of realistic activations; the held-out set keeps the rest."""
    return min(500, n // 4)


# ---------------------------------------------------------------- the decision


def choose(candidates: Sequence[Candidate], budget: float) -> Candidate | None:
    """The fastest candidate (p50, then p99, then size) whose loss is within the budget."""
    fitting = [c for c in candidates if c.within(budget) and c.latency is not None]
    if not fitting:
        return None

    def key(c: Candidate) -> tuple[float, float, int]:
        assert c.latency is not None
        return (c.latency.p50_ms, c.latency.p99_ms, c.size_bytes or 0)

    return min(fitting, key=key)


def why_not(candidate: Candidate, metric: Metric, budget: float) -> str:
    """Why a candidate was not chosen, in words (its measured loss when it has one)."""
    if candidate.status != "measured":
        return f"{candidate.method}: {candidate.status}, {candidate.note}"
    assert candidate.loss is not None
    if candidate.loss > budget:
        return (
            f"{candidate.method}: {loss_words(metric, candidate.loss)} is over the budget "
            f"of {budget:g}"
        )
    return f"{candidate.method}: {loss_words(metric, candidate.loss)}, within the budget"


def refusal(report: Report) -> str:
    """The sentence `rtml optimize` ends with when nothing fits the budget."""
    reasons = "; ".join(
        why_not(c, report.metric, report.max_accuracy_loss) for c in report.candidates
    )
    if not any(c.status == "measured" for c in report.candidates):
        return f"nothing to optimize in {report.artifact}, so nothing was written: {reasons}"
    return (
        f"no candidate keeps the {METRIC_TITLES[report.metric]} within "
        f"--max-accuracy-loss {report.max_accuracy_loss:g}, so nothing was written: {reasons}"
    )


def output_name(original: Path, method: str) -> Path:
    """Where the winner goes by default: next to the original, named for what was done
    (model.onnx -> model.int8.onnx, or model.opt.onnx for graph optimization alone)."""
    tag = "int8" if method in INT8_METHODS else "opt"
    return original.with_name(f"{original.stem}.{tag}{original.suffix or '.onnx'}")


def written_files(out: Path, sha256: str, base_dir: Path) -> dict[str, str]:
    """What a run whose winner goes to `out` writes: the artifact (and the URI a Model next to
    the manifest names it by), its digest file, the JSON and the text report."""
    return {
        "path": str(out),
        "uri": artifact_uri(out, base_dir),
        "sha256": sha256,
        "sha256_file": str(out.with_name(out.name + ".sha256")),
        "json": str(out.with_suffix(".report.json")),
        "text": str(out.with_suffix(".report.txt")),
    }


def artifact_uri(path: Path, base_dir: Path) -> str:
    """A file:// URI for `path` as a Model next to the manifest would name it: relative to
    the manifest's folder when the file is inside it, else absolute."""
    try:
        return f"file://{path.resolve().relative_to(base_dir.resolve())}"
    except ValueError:
        return f"file://{path.resolve()}"


# ---------------------------------------------------------------- the report


def report_json(report: Report) -> dict[str, Any]:
    """The report as one JSON document (floats as measured, NaN-free)."""
    doc = asdict(report)
    doc["budget_met"] = report.winner is not None
    doc["verdict"] = verdict(report)
    return _finite(doc)  # type: ignore[no-any-return]


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _change(before: float, after: float) -> str:
    if before <= 0:
        return ""
    return f" ({(after - before) / before:+.0%})"


def verdict(report: Report) -> str:
    """One sentence: what was written and how it compares, or why nothing was."""
    winner = next((c for c in report.candidates if c.method == report.winner), None)
    if winner is None or winner.latency is None or winner.loss is None:
        return refusal(report)
    before, after = report.original_latency, winner.latency
    if after.p50_ms <= before.p50_ms * (1 - SAME_SPEED):
        speed = "faster than the original at p50"
    elif after.p50_ms >= before.p50_ms * (1 + SAME_SPEED):
        speed = "slower than the original at p50"
    else:
        speed = f"within {SAME_SPEED:.0%} of the original at p50: no measurable gain"
    return (
        f"{winner.method} is within the budget ({loss_words(report.metric, winner.loss)} <= "
        f"{report.max_accuracy_loss:g}) and the fastest candidate; single-row p50 "
        f"{before.p50_ms:.3f} -> {after.p50_ms:.3f} ms{_change(before.p50_ms, after.p50_ms)}, "
        f"p99 {before.p99_ms:.3f} -> {after.p99_ms:.3f} ms{_change(before.p99_ms, after.p99_ms)} "
        f"({speed} on this machine)"
    )


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_report(report: Report) -> str:
    """The human report: what was optimized against what, one row per candidate, the verdict."""
    labelled = f", label {report.label!r}" if report.label else ", no labels"
    digest = report.artifact_sha256[:12] + ("" if report.verified else " (not pinned)")
    lines = [
        f"rtml optimize: Model {report.model} {report.version}, {report.artifact} "
        f"({_size(report.size_bytes)}, sha256 {digest}…)",
        f"data: {report.data}: {report.held_out_rows:,} held-out rows, "
        f"{report.calibration_rows:,} calibration rows (seed {report.seed}){labelled}",
        f"accuracy loss: {METRIC_TITLES[report.metric]}, budget {report.max_accuracy_loss:g}; "
        f"latency: single-row, {report.original_latency.runs:,} interleaved runs per model",
    ]
    quantizable = ", ".join(f"{n} {op}" for op, n in report.quantizable.items())
    lines.append(
        f"quantizable nodes: {quantizable}"
        if quantizable
        else nothing_to_quantize(report.quantizable)
    )
    header = ("method", "size", "AUC", "loss", "max|Δ|", "mean|Δ|", "p50 ms", "p99 ms", "budget")
    rows = [header]
    orig = report.original_accuracy
    rows.append(
        (
            "original",
            _size(report.size_bytes),
            _num(orig.auc, ".4f"),
            "-",
            "-",
            "-",
            f"{report.original_latency.p50_ms:.3f}",
            f"{report.original_latency.p99_ms:.3f}",
            "",
        )
    )
    notes = []
    for c in report.candidates:
        if c.status != "measured" or c.accuracy is None or c.latency is None:
            rows.append((c.method, _size(c.size_bytes), c.status, "", "", "", "", "", ""))
            notes.append(f"{c.method}: {c.note}")
            continue
        within = "within" if c.within(report.max_accuracy_loss) else "over"
        rows.append(
            (
                c.method + (" *" if c.method == report.winner else ""),
                _size(c.size_bytes),
                _num(c.accuracy.auc, ".4f"),
                _num(c.loss, ".4f"),
                f"{c.accuracy.max_abs_diff:.2e}",
                f"{c.accuracy.mean_abs_diff:.2e}",
                f"{c.latency.p50_ms:.3f}",
                f"{c.latency.p99_ms:.3f}",
                within,
            )
        )
        if c.note:
            notes.append(f"{c.method}: {c.note}")
        if c.batch_drift is not None and c.batch_drift > DRIFT_NOTED:
            notes.append(
                f"{c.method}: a row scored in a batch (/predict_batch) differs from its score "
                f"alone (/predict, what was measured) by up to {c.batch_drift:.2e}"
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines.append("")
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append("")
    lines += notes
    if report.written:  # a refusal is the command's error sentence, not repeated here
        lines.append(verdict(report))
        w = report.written
        lines += [
            f"wrote {w['path']} (sha256 {w['sha256']}), {w['sha256_file']}, {w['json']} "
            f"and {w['text']}; serve it with:",
            f"  spec.artifact: {{uri: {w['uri']}, sha256: {w['sha256']}}}",
        ]
    return "\n".join(lines)
