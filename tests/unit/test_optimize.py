"""`rtml optimize`: the pure decisions (accuracy, budget, winner, report) and the command run
in process on small models built with onnx.helper — an MLP whose MatMuls INT8 quantization
really rewrites, and an element-wise model with nothing to quantize. ONNX Runtime runs for
real; no server is needed. The fraud example's trees are tests/integration/test_optimize.py's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner, Result
from onnx import TensorProto, helper, numpy_helper
from sklearn.metrics import roc_auc_score

from rtml.cli import main
from rtml.onnx_inputs import DECLARED_FEATURES
from rtml.optimize import (
    Accuracy,
    Candidate,
    Latency,
    Report,
    accuracy_loss,
    accuracy_of,
    artifact_uri,
    choose,
    default_calibration_rows,
    format_report,
    output_name,
    quantizable_nodes,
    refusal,
    report_json,
    roc_auc,
    split_rows,
    why_not,
    written_files,
)

pytestmark = pytest.mark.unit
COLUMNS = [f"f{i}" for i in range(8)]
FAST = ["--runs", "30", "--warmup", "3"]  # the decision is tested, not this machine's speed


# -- accuracy -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_equals_scikit_learns_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(400) < 0.2
    scores = np.round(rng.random(400) + 0.3 * labels, 1)  # rounded: many ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_roc_auc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.ones(5, bool), np.arange(5.0))


def test_accuracy_loss_by_metric() -> None:
    labels = np.array([0, 0, 1, 1], bool)
    original = np.array([0.1, 0.2, 0.8, 0.9])
    worse = np.array([0.1, 0.85, 0.8, 0.9])  # one negative now outranks a positive
    base = accuracy_of(original, original, labels)
    got = accuracy_of(worse, original, labels)
    assert base.auc == 1.0
    assert got.auc == 0.75
    assert got.max_abs_diff == pytest.approx(0.65)
    assert got.mean_abs_diff == pytest.approx(0.65 / 4)
    assert accuracy_loss("auc", base, got) == pytest.approx(0.25)
    assert accuracy_loss("max-abs-diff", base, got) == pytest.approx(0.65)
    assert accuracy_loss("mean-abs-diff", base, got) == pytest.approx(0.1625)
    assert accuracy_loss("auc", got, base) == pytest.approx(-0.25)  # better is a negative loss
    unlabelled = accuracy_of(worse, original, None)
    assert unlabelled.auc is None
    with pytest.raises(ValueError, match="--label"):
        accuracy_loss("auc", unlabelled, unlabelled)


# -- what applies, where it goes ------------------------------------------------------------------


def test_quantizable_nodes_are_matmul_gemm_conv_of_the_onnx_domain() -> None:
    ops = [("", "MatMul"), ("", "MatMul"), ("", "Gemm"), ("", "Gather"), ("", "Relu")]
    assert quantizable_nodes(ops) == {"Gemm": 1, "MatMul": 2}
    trees = [("", "Concat"), ("ai.onnx.ml", "TreeEnsembleClassifier"), ("", "Gather")]
    assert quantizable_nodes(trees) == {}


def test_split_rows_is_seeded_disjoint_and_complete() -> None:
    calibration, held_out = split_rows(100, 25, seed=3)
    assert len(calibration) == 25
    assert len(held_out) == 75
    assert sorted({*calibration.tolist(), *held_out.tolist()}) == list(range(100))
    again = split_rows(100, 25, seed=3)
    assert again[0].tolist() == calibration.tolist()
    assert split_rows(100, 25, seed=4)[0].tolist() != calibration.tolist()
    with pytest.raises(ValueError, match="cannot take 100"):
        split_rows(100, 100, seed=0)


@pytest.mark.parametrize(("rows", "expected"), [(6250, 500), (625, 156), (3, 0)])
def test_default_calibration_rows(rows: int, expected: int) -> None:
    assert default_calibration_rows(rows) == expected


def test_output_name_and_uri(tmp_path: Path) -> None:
    original = tmp_path / "build" / "model.onnx"
    assert output_name(original, "int8-dynamic") == tmp_path / "build" / "model.int8.onnx"
    assert output_name(original, "int8-static") == tmp_path / "build" / "model.int8.onnx"
    assert output_name(original, "graph") == tmp_path / "build" / "model.opt.onnx"
    assert artifact_uri(tmp_path / "build" / "m.onnx", tmp_path) == "file://build/m.onnx"
    elsewhere = Path("/var/models/m.onnx")
    assert artifact_uri(elsewhere, tmp_path) == "file:///var/models/m.onnx"


# -- the decision ----------------------------------------------------------------------------------


def measured(method: str, loss: float, p50: float, p99: float = 1.0, size: int = 100) -> Candidate:
    return Candidate(
        method,
        "measured",
        size_bytes=size,
        accuracy=Accuracy(auc=0.9 - loss, max_abs_diff=0.2, mean_abs_diff=0.01),
        loss=loss,
        latency=Latency(p50_ms=p50, p99_ms=p99, runs=100),
    )


def test_choose_takes_the_fastest_within_the_budget() -> None:
    graph = measured("graph", 0.0, p50=0.030)
    dynamic = measured("int8-dynamic", 0.004, p50=0.020)
    static = measured("int8-static", 0.02, p50=0.010)  # fastest, but over the budget
    winner = choose([graph, dynamic, static], budget=0.01)
    assert winner is not None
    assert winner.method == "int8-dynamic"
    assert choose([graph, dynamic, static], budget=0.05) == static
    assert choose([graph, dynamic, static], budget=0.0) == graph  # a zero loss fits budget 0


def test_choose_breaks_ties_on_p99_then_size_and_skips_what_was_not_measured() -> None:
    a = measured("graph", 0.0, p50=0.02, p99=0.05, size=10)
    b = measured("int8-dynamic", 0.0, p50=0.02, p99=0.04, size=20)
    c = measured("int8-static", 0.0, p50=0.02, p99=0.04, size=5)
    assert choose([a, b, c], budget=0.01) == c
    skipped = Candidate("int8-dynamic", "skipped", "no quantizable operators")
    failed = Candidate("int8-static", "failed", "it scores 3 of 10 held-out rows as NaN")
    assert choose([skipped, failed], budget=1.0) is None


def make_report(candidates: list[Candidate], winner: str | None = None, **kw: Any) -> Report:
    fields: dict[str, Any] = {
        "model": "fraud",
        "version": "v1",
        "artifact": "/m/model.onnx",
        "artifact_sha256": "ab" * 32,
        "verified": True,
        "size_bytes": 53575,
        "data": "holdout.parquet",
        "label": "fraud",
        "calibration_rows": 156,
        "held_out_rows": 469,
        "seed": 0,
        "metric": "auc",
        "max_accuracy_loss": 0.01,
        "quantizable": {"MatMul": 3},
        "original_accuracy": Accuracy(auc=0.9, max_abs_diff=0.0, mean_abs_diff=0.0),
        "original_latency": Latency(p50_ms=0.040, p99_ms=0.080, runs=100),
        "candidates": candidates,
        "winner": winner,
    }
    fields.update(kw)
    return Report(**fields)


def test_refusal_names_each_methods_measured_loss() -> None:
    report = make_report(
        [
            measured("int8-dynamic", 0.0234, p50=0.02),
            Candidate("int8-static", "failed", "int8-static could not be made: boom"),
        ]
    )
    assert choose(report.candidates, report.max_accuracy_loss) is None
    text = refusal(report)
    assert "int8-dynamic: ROC AUC drop 0.0234 is over the budget of 0.01" in text
    assert "int8-static: failed, int8-static could not be made: boom" in text
    assert "nothing was written" in text
    assert report_json(report)["budget_met"] is False
    assert report_json(report)["verdict"] == text
    assert "wrote" not in format_report(report)


def test_refusal_when_nothing_applies_says_so() -> None:
    report = make_report(
        [Candidate("graph", "skipped", "ONNX Runtime rewrote no node at ORT_ENABLE_EXTENDED")],
        quantizable={},
    )
    assert refusal(report).startswith("nothing to optimize in /m/model.onnx")
    assert "no quantizable operators (Conv, Gemm, MatMul); graph optimization only" in (
        format_report(report)
    )
    assert why_not(report.candidates[0], "auc", 0.01) == (
        "graph: skipped, ONNX Runtime rewrote no node at ORT_ENABLE_EXTENDED"
    )


def test_report_of_a_winner(tmp_path: Path) -> None:
    dynamic = measured("int8-dynamic", 0.004, p50=0.030, p99=0.060, size=20_000)
    written = written_files(tmp_path / "model.int8.onnx", "cd" * 32, tmp_path)
    report = make_report([dynamic], winner="int8-dynamic", written=written)
    text = format_report(report)
    row = next(line for line in text.splitlines() if line.startswith("int8-dynamic *"))
    assert row.split() == [
        "int8-dynamic", "*", "19.5", "KiB", "0.8960", "0.0040", "2.00e-01", "1.00e-02", "0.030",
        "0.060", "within",
    ]  # fmt: skip
    assert "single-row p50 0.040 -> 0.030 ms (-25%), p99 0.080 -> 0.060 ms (-25%)" in text
    assert "(faster than the original at p50 on this machine)" in text
    assert f"spec.artifact: {{uri: file://model.int8.onnx, sha256: {'cd' * 32}}}" in text
    doc = json.loads(json.dumps(report_json(report), allow_nan=False))
    assert doc["budget_met"] is True
    assert doc["winner"] == "int8-dynamic"
    assert doc["written"]["sha256_file"] == str(tmp_path / "model.int8.onnx.sha256")
    assert doc["candidates"][0]["latency"] == {"p50_ms": 0.03, "p99_ms": 0.06, "runs": 100}


def test_report_json_has_no_nan_or_infinity() -> None:
    odd = Candidate("graph", "measured", loss=float("inf"), latency=Latency(float("nan"), 1, 1))
    doc = report_json(make_report([odd]))
    json.dumps(doc, allow_nan=False)
    assert doc["candidates"][0]["loss"] is None


# -- the command, on models built here ------------------------------------------------------------


def save(graph: Any, path: Path) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, {DECLARED_FEATURES: json.dumps(COLUMNS)})
    data = model.SerializeToString()
    path.write_bytes(data)
    return bytes(data)


def mlp(path: Path, hidden: int = 256) -> bytes:
    """features [N, 8] -> MatMul, Add, Relu -> MatMul, Add, Sigmoid -> score [N, 1]."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.normal(0, 0.5, (len(COLUMNS), hidden)).astype(np.float32),
        "b1": rng.normal(0, 0.1, hidden).astype(np.float32),
        "w2": rng.normal(0, 0.3, (hidden, 1)).astype(np.float32),
        "b2": np.zeros(1, np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["features", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["a"]),
        helper.make_node("MatMul", ["a", "w2"], ["z"]),
        helper.make_node("Add", ["z", "b2"], ["zb"]),
        helper.make_node("Sigmoid", ["zb"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, len(COLUMNS)])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    return save(graph, path)


def elementwise(path: Path) -> bytes:
    """score = Sigmoid(ReduceSum(features * w)): nothing INT8 quantization acts on."""
    w = np.linspace(-1, 1, len(COLUMNS), dtype=np.float32)
    axes = np.array([1], np.int64)
    nodes = [
        helper.make_node("Mul", ["features", "w"], ["m"]),
        helper.make_node("Identity", ["m"], ["m2"]),  # what graph optimization removes
        helper.make_node("ReduceSum", ["m2", "axes"], ["s"], keepdims=1),
        helper.make_node("Sigmoid", ["s"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "elementwise",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, len(COLUMNS)])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(axes, "axes")],
    )
    return save(graph, path)


def manifest(folder: Path, artifact: str, sha256: str | None) -> Path:
    art: dict[str, Any] = {"uri": artifact}
    art.update({"sha256": sha256} if sha256 else {"allowUnverified": True})
    doc = {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "tiny"},
        "spec": {
            "version": "v1",
            "artifact": art,
            "features": {"requestFeatures": COLUMNS, "columns": COLUMNS},
        },
    }
    path = folder / "model.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def rows_file(folder: Path, n: int = 600, label: bool = True) -> Path:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, len(COLUMNS))).astype(np.float32)
    columns: dict[str, Any] = {c: x[:, i] for i, c in enumerate(COLUMNS)}
    if label:
        columns["fraud"] = x[:, 0] - x[:, 3] + rng.normal(0, 0.5, n) > 0.8
    path = folder / "rows.parquet"
    pq.write_table(pa.table(columns), path)
    return path


@pytest.fixture
def tiny_mlp(tmp_path: Path) -> tuple[Path, Path]:
    data = mlp(tmp_path / "mlp.onnx")
    return manifest(tmp_path, "file://mlp.onnx", hashlib.sha256(data).hexdigest()), rows_file(
        tmp_path
    )


def optimize(*args: str) -> Result:
    return CliRunner().invoke(main, ["optimize", *args, *FAST])


def test_int8_dynamic_quantizes_the_matmuls_and_the_winner_is_written(
    tiny_mlp: tuple[Path, Path], tmp_path: Path
) -> None:
    path, rows = tiny_mlp
    args = ["--data", str(rows), "--label", "fraud", "--max-accuracy-loss", "0.05", "--json"]
    out = optimize(str(path), *args, "--method", "int8-dynamic")
    assert out.exit_code == 0, out.output + out.stderr
    doc = json.loads(out.stdout)
    assert doc["quantizable"] == {"MatMul": 2}
    (dynamic,) = doc["candidates"]
    assert dynamic["status"] == "measured"
    assert dynamic["quantization_nodes"] >= 2  # DynamicQuantizeLinear + MatMulInteger per MatMul
    assert dynamic["size_bytes"] < doc["size_bytes"] / 2  # INT8 weights: about a quarter
    assert 0 < dynamic["accuracy"]["mean_abs_diff"] < 0.02  # it changed, a little
    assert dynamic["accuracy"]["mean_abs_diff"] < dynamic["accuracy"]["max_abs_diff"] < 0.25
    assert dynamic["loss"] == pytest.approx(
        doc["original_accuracy"]["auc"] - dynamic["accuracy"]["auc"]
    )
    assert dynamic["latency"]["runs"] == doc["original_latency"]["runs"] == 30
    # Its activation ranges span the whole input: a row's score depends on the rows beside it.
    assert dynamic["batch_drift"] > 0
    assert doc["winner"] == "int8-dynamic"
    assert doc["calibration_rows"] == 150
    assert doc["held_out_rows"] == 450
    written = tmp_path / "mlp.int8.onnx"
    digest = hashlib.sha256(written.read_bytes()).hexdigest()
    assert doc["written"]["sha256"] == digest
    assert doc["written"]["uri"] == "file://mlp.int8.onnx"
    assert (tmp_path / "mlp.int8.onnx.sha256").read_text() == f"{digest}  mlp.int8.onnx\n"
    assert json.loads((tmp_path / "mlp.int8.report.json").read_text()) == doc
    assert "int8-dynamic *" in (tmp_path / "mlp.int8.report.txt").read_text()
    for line in ("matches spec.artifact.sha256", "making int8-dynamic", "latency: 30 single-row"):
        assert line in out.stderr


def test_every_method_on_the_mlp_and_the_human_report(
    tiny_mlp: tuple[Path, Path], tmp_path: Path
) -> None:
    path, rows = tiny_mlp
    out = optimize(str(path), "--data", str(rows), "--label", "fraud", "--max-accuracy-loss", "1")
    assert out.exit_code == 0, out.output + out.stderr
    table = {line.split()[0]: line for line in out.stdout.splitlines() if line}
    for method in ("original", "graph", "int8-dynamic", "int8-static"):
        assert method in table, out.stdout
    assert "within" in table["int8-static"]
    assert "quantizable nodes: 2 MatMul" in out.stdout
    report = json.loads(next(tmp_path.glob("mlp.*.report.json")).read_text())
    static = next(c for c in report["candidates"] if c["method"] == "int8-static")
    assert static["quantization_nodes"] > 0  # QuantizeLinear of the activations: calibrated
    graph = next(c for c in report["candidates"] if c["method"] == "graph")
    assert graph["batch_drift"] < 1e-6
    assert static["batch_drift"] < 1e-6  # calibrated ranges: the same for any batch


def test_over_the_budget_nothing_is_written_and_the_measured_loss_is_said(
    tiny_mlp: tuple[Path, Path], tmp_path: Path
) -> None:
    path, rows = tiny_mlp
    before = sorted(p.name for p in tmp_path.iterdir())
    out = optimize(
        str(path), "--data", str(rows), "--metric", "max-abs-diff", "--max-accuracy-loss", "0",
        "--method", "int8-dynamic", "--method", "int8-static", "--json",
    )  # fmt: skip
    assert out.exit_code == 3, out.output + out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    doc = json.loads(out.stdout)
    assert doc["winner"] is None
    assert doc["written"] == {}
    for c in doc["candidates"]:
        assert c["loss"] > 0
        assert f"{c['method']}: max absolute score difference {c['loss']:.4g} is over" in out.stderr


def test_a_model_without_matmul_gets_graph_optimization_only(tmp_path: Path) -> None:
    data = elementwise(tmp_path / "lin.onnx")
    path = manifest(tmp_path, "file://lin.onnx", None)  # allowUnverified: optimized as it is
    rows = rows_file(tmp_path, label=False)
    out = optimize(str(path), "--data", str(rows), "--max-accuracy-loss", "0", "--json")
    assert out.exit_code == 0, out.output + out.stderr
    doc = json.loads(out.stdout)
    assert doc["quantizable"] == {}
    assert doc["metric"] == "mean-abs-diff"  # no labels
    assert doc["verified"] is False
    assert doc["artifact_sha256"] == hashlib.sha256(data).hexdigest()
    by_method = {c["method"]: c for c in doc["candidates"]}
    for method in ("int8-dynamic", "int8-static"):
        assert by_method[method]["status"] == "skipped"
        assert by_method[method]["note"] == "no quantizable operators (Conv, Gemm, MatMul)"
    assert by_method["graph"]["loss"] == 0.0
    assert doc["winner"] == "graph"
    assert (tmp_path / "lin.opt.onnx").is_file()
    assert "allowUnverified" in out.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"uri": "s3://models/m.onnx"}, "rtml optimize works on a local file:// artifact"),
        ({"sha256": "0" * 64}, "but spec.artifact.sha256 is 0000"),
        ({"uri": "file://missing.onnx"}, "does not exist"),
    ],
)
def test_an_artifact_that_cannot_be_used_is_a_sentence(
    tiny_mlp: tuple[Path, Path], change: dict[str, str], message: str
) -> None:
    path, rows = tiny_mlp
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["artifact"].update(change)
    path.write_text(yaml.safe_dump(doc))
    out = optimize(str(path), "--data", str(rows), "--max-accuracy-loss", "0.01")
    assert out.exit_code == 1
    assert message in out.stderr
    assert out.stdout == ""


def test_data_errors_name_the_column(tiny_mlp: tuple[Path, Path], tmp_path: Path) -> None:
    path, _ = tiny_mlp
    pq.write_table(pa.table({"f0": [1.0, 2.0]}), tmp_path / "thin.parquet")
    out = optimize(str(path), "--data", str(tmp_path / "thin.parquet"), "--max-accuracy-loss", "1")
    assert out.exit_code == 1
    assert "has no column 'f1', 'f2'" in out.stderr
    rows = rows_file(tmp_path)
    out = optimize(str(path), "--data", str(rows), "--label", "nope", "--max-accuracy-loss", "1")
    assert "the --label column 'nope'" in out.stderr
    three = tmp_path / "three.parquet"
    pq.write_table(pa.table({**{c: [0.5] * 3 for c in COLUMNS}, "kind": [0, 1, 2]}), three)
    out = optimize(str(path), "--data", str(three), "--label", "kind", "--max-accuracy-loss", "1")
    assert (
        "must hold both classes of a binary label (0/1 or false/true); it holds ['0', '1', '2']"
        in (out.stderr)
    )
    out = optimize(str(path), "--data", str(rows), "--metric", "auc", "--max-accuracy-loss", "1")
    assert out.exit_code == 2
    assert "the auc metric needs labels" in out.stderr


def test_help_lists_the_exit_codes() -> None:
    out = CliRunner().invoke(main, ["optimize", "--help"])
    assert out.exit_code == 0, out.output
    for line in ("0  a candidate fits the budget and was written", "3  no candidate fits"):
        assert line in out.output


def test_a_file_onnx_runtime_cannot_load_is_a_sentence(tmp_path: Path) -> None:
    junk = b"not a model"
    (tmp_path / "junk.onnx").write_bytes(junk)
    path = manifest(tmp_path, "file://junk.onnx", hashlib.sha256(junk).hexdigest())
    out = optimize(str(path), "--data", str(rows_file(tmp_path)), "--max-accuracy-loss", "1")
    assert out.exit_code == 1
    assert "ONNX Runtime cannot load" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.onnx", "model.yaml", "rows.parquet"]
