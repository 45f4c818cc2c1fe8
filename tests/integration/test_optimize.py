"""`rtml optimize` on the fraud example as examples/fraud/build.py builds it (issue 13, item 5).

Acceptance: on the example model, INT8 either meets the budget — and the new artifact serves
with its digest — or is refused with the measured loss; the report's numbers are measured.
Either outcome is checked for what it claims: a written artifact is served by `rtml serve`
(BentoML-hosted, pinned to the digest the report gives) and answers close to the original; a
refusal names each method's measured loss and leaves the folder as it was. The report's
accuracy is recomputed here from ONNX Runtime and scikit-learn, not read back.

Two models: the example's model.onnx (gradient-boosted trees: nothing INT8 applies to, so the
report must say so), and a scikit-learn MLP trained here on half of the example's held-out
rows (three MatMuls), where dynamic and static quantization both apply.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import yaml
from skl2onnx import to_onnx
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from rtml.optimize import split_rows
from tests.runtime_proc import REPO, RuntimeProcess, run_rtml

pytestmark = pytest.mark.runtime
BUDGET = "0.01"
RUNS = "500"
SERVED_ROWS = 5


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fraud example, small: 5,000 transactions, 625 of them in holdout.parquet."""
    out = tmp_path_factory.mktemp("optimize-example")
    build = [sys.executable, str(REPO / "examples/fraud/build.py"), "--out", str(out)]
    subprocess.run(
        [*build, "--rows", "5000"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def model_manifest(
    folder: Path, artifact: Path, columns: list[str], wide: bool, output: dict[str, Any] | None
) -> Path:
    """A Model whose features all come in the request (no FeatureView: serving needs no store)."""
    features: dict[str, Any] = {"requestFeatures": columns}
    if wide:
        features["columns"] = columns
    spec: dict[str, Any] = {
        "version": "v1",
        "artifact": {
            "uri": f"file://{artifact.name}",
            "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
        },
        "features": features,
        "warmup": {"requests": 5},
    }
    if output:
        spec["output"] = output
    path = folder / f"{artifact.stem}.yaml"
    doc = {"apiVersion": "rtml.dev/v1alpha1", "kind": "Model", "metadata": {"name": "fraud"}}
    path.write_text(yaml.safe_dump({**doc, "spec": spec}))
    return path


def ort_scores(path: Path, x: np.ndarray, output: dict[str, Any] | None) -> np.ndarray:
    """Each row's score alone (as /predict scores it), straight from ONNX Runtime, independent
    of rtml's OnnxModel. Alone: an int8-dynamic model's score depends on the batch."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    name = output["name"] if output else "score"
    out = []
    for row in x.astype(np.float32):
        one = row[None, :]
        if len(inputs) == 1:
            feed = {inputs[0].name: one}
        else:
            feed = {i.name: one[:, k : k + 1] for k, i in enumerate(inputs)}
        (score,) = session.run([name], feed)
        score = np.asarray(score, np.float64)
        out.append(score[0, output["column"]] if output else score.reshape(-1)[0])
    return np.array(out)


def optimize(manifest: Path, data: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    done = run_rtml(
        "optimize", str(manifest), "--data", str(data), "--label", "fraud",
        "--max-accuracy-loss", BUDGET, "--runs", RUNS, "--json", *extra,
    )  # fmt: skip
    assert done.returncode in (0, 3), done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def check_numbers(doc: dict[str, Any], artifact: Path, rows: pd.DataFrame, columns: list[str],
                  output: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The report's original AUC and split, recomputed; (held-out x, original scores)."""
    calibration, held_out = split_rows(len(rows), doc["calibration_rows"], doc["seed"])
    assert len(held_out) == doc["held_out_rows"]
    assert len(calibration) + len(held_out) == len(rows)
    x = rows[columns].to_numpy(np.float64)[held_out]
    labels = rows["fraud"].to_numpy()[held_out]
    original = ort_scores(artifact, x, output)
    assert doc["original_accuracy"]["auc"] == pytest.approx(roc_auc_score(labels, original))
    latency = doc["original_latency"]
    assert latency["runs"] == int(RUNS)
    assert 0 < latency["p50_ms"] <= latency["p99_ms"]
    for c in doc["candidates"]:
        if c["status"] == "measured":
            assert c["latency"]["runs"] == int(RUNS)
            assert 0 < c["latency"]["p50_ms"] <= c["latency"]["p99_ms"]
    return x, original


def check_written_or_refused(
    rc: int,
    doc: dict[str, Any],
    stderr: str,
    work: Path,
    before: list[str],
    x: np.ndarray,
    original: np.ndarray,
    columns: list[str],
    wide: bool,
    output: dict[str, Any] | None,
) -> None:
    if rc == 3:
        assert doc["winner"] is None
        assert doc["written"] == {}
        assert sorted(p.name for p in work.iterdir()) == before  # nothing written
        for c in doc["candidates"]:
            if c["status"] == "measured":
                assert f"{c['method']}: ROC AUC drop {c['loss']:.4g}" in stderr
        return
    winner = next(c for c in doc["candidates"] if c["method"] == doc["winner"])
    assert winner["loss"] <= float(BUDGET)
    written = Path(doc["written"]["path"])
    assert written.parent == work
    digest = hashlib.sha256(written.read_bytes()).hexdigest()
    assert doc["written"]["sha256"] == digest
    assert (work / f"{written.name}.sha256").read_text().split()[0] == digest
    assert json.loads(written.with_suffix(".report.json").read_text()) == doc
    # The report's score differences are the written file's, as ONNX Runtime computes them.
    candidate = ort_scores(written, x, output)
    diff = np.abs(candidate - original)
    assert winner["accuracy"]["max_abs_diff"] == pytest.approx(diff.max(), abs=1e-6)
    assert winner["accuracy"]["mean_abs_diff"] == pytest.approx(diff.mean(), abs=1e-6)
    # It serves, pinned to the digest the report names, and answers as measured.
    serve_dir = work / "serve"
    serve_dir.mkdir()
    shutil.copy(written, serve_dir / written.name)
    manifest = model_manifest(serve_dir, serve_dir / written.name, columns, wide, output)
    assert yaml.safe_load(manifest.read_text())["spec"]["artifact"]["sha256"] == digest
    proc = RuntimeProcess(manifest, redis_url=None, extra_args=["--no-register"])
    proc.start()
    try:
        for i in range(SERVED_ROWS):
            features = dict(zip(columns, map(float, x[i]), strict=True))
            status, body, _ = proc.post("/predict", {"features": features})
            assert status == 200, body
            assert body["score"] == pytest.approx(candidate[i], abs=1e-5)
            assert abs(body["score"] - original[i]) <= winner["accuracy"]["max_abs_diff"] + 1e-5
    finally:
        proc.stop()


def test_the_example_model_has_nothing_to_quantize_and_says_so(
    example: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    artifact = Path(shutil.copy(example / "model.onnx", work / "model.onnx"))
    columns = [i.name for i in onnx.load(str(artifact)).graph.input]
    assert len(columns) == 30
    manifest = model_manifest(work, artifact, columns, wide=False, output=None)
    before = sorted(p.name for p in work.iterdir())
    rc, doc, stderr = optimize(manifest, example / "holdout.parquet")
    assert doc["quantizable"] == {}  # TreeEnsembleClassifier: no MatMul, Gemm or Conv
    by_method = {c["method"]: c for c in doc["candidates"]}
    for method in ("int8-dynamic", "int8-static"):
        assert by_method[method]["status"] == "skipped"
        assert by_method[method]["note"] == "no quantizable operators (Conv, Gemm, MatMul)"
    rows = pd.read_parquet(example / "holdout.parquet")
    x, original = check_numbers(doc, artifact, rows, columns, None)
    check_written_or_refused(rc, doc, stderr, work, before, x, original, columns, False, None)
    human = run_rtml(
        "optimize", str(manifest), "--data", str(example / "holdout.parquet"), "--label",
        "fraud", "--max-accuracy-loss", BUDGET, "--runs", "50", "--out", str(tmp_path / "h.onnx"),
    )  # fmt: skip
    assert "no quantizable operators (Conv, Gemm, MatMul); graph optimization only" in human.stdout


def test_an_mlp_on_the_example_data_is_quantized_to_int8_or_refused(
    example: Path, tmp_path: Path
) -> None:
    rows = pd.read_parquet(example / "holdout.parquet")
    columns = [c for c in rows.columns if c != "fraud"]
    train, rest = rows.iloc[: len(rows) // 2], rows.iloc[len(rows) // 2 :]
    x_train = train[columns].to_numpy(np.float32)
    clf = make_pipeline(StandardScaler(), MLPClassifier((128,), max_iter=300, random_state=0))
    clf.fit(x_train, train["fraud"])
    work = tmp_path / "work"
    work.mkdir()
    artifact = work / "mlp.onnx"
    exported = to_onnx(clf, x_train[:1], options={"zipmap": False})
    artifact.write_bytes(exported.SerializeToString())
    data = tmp_path / "rows.parquet"  # outside `work`, which must stay as it was on a refusal
    rest.reset_index(drop=True).to_parquet(data, index=False)
    output = {"name": "probabilities", "column": 1}
    manifest = model_manifest(work, artifact, columns, wide=True, output=output)
    before = sorted(p.name for p in work.iterdir())
    rc, doc, stderr = optimize(
        manifest, data, "--method", "int8-dynamic", "--method", "int8-static"
    )
    assert doc["quantizable"] == {"MatMul": 2}
    for c in doc["candidates"]:
        assert c["status"] == "measured", c
        assert c["quantization_nodes"] > 0
        assert c["size_bytes"] < doc["size_bytes"]
    x, original = check_numbers(doc, artifact, rest.reset_index(drop=True), columns, output)
    check_written_or_refused(rc, doc, stderr, work, before, x, original, columns, True, output)
