"""A model as its exporter writes it, served as a new user would (issue 13, item 4): a 4-feature
LogisticRegression exported by `skl2onnx.to_onnx` with its defaults (one [N, 4] input, outputs
`output_label` and a ZipMap `output_probability`, no rtml metadata). With only
spec.features.columns and spec.output added to its Model, `rtml validate` accepts it and
`rtml serve` (BentoML-hosted, as in the pods) answers scikit-learn's own probability; without
spec.output both say which field to set, and the runtime stays not ready."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from tests.kube import wait_for
from tests.runtime_proc import RuntimeProcess, rtml_env

pytestmark = pytest.mark.runtime
COLUMNS = ["amount", "age", "velocity", "risk"]
OUTPUT = {"name": "output_probability", "column": 1}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LogisticRegression]:
    rng = np.random.default_rng(3)
    x = rng.random((500, 4)).astype(np.float32)
    clf = LogisticRegression().fit(x, (x[:, 0] - x[:, 3] > 0).astype(np.int64))
    path = tmp_path_factory.mktemp("exported") / "lr.onnx"
    path.write_bytes(to_onnx(clf, x[:1]).SerializeToString())
    return path, clf


def manifest(where: Path, artifact: Path, output: dict[str, Any] | None) -> Path:
    spec: dict[str, Any] = {
        "version": "v1",
        "artifact": {
            "uri": f"file://{artifact}",
            "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
        },
        "features": {"requestFeatures": COLUMNS, "columns": COLUMNS},
        "warmup": {"requests": 5},
    }
    if output is not None:
        spec["output"] = output
    where.mkdir(parents=True, exist_ok=True)
    path = where / "model.yaml"
    doc = {"apiVersion": "rtml.dev/v1alpha1", "kind": "Model", "metadata": {"name": "lr"}}
    path.write_text(yaml.safe_dump({**doc, "spec": spec}))
    return path


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "rtml.cli", "validate", str(path)]
    return subprocess.run(
        argv, capture_output=True, text=True, env=rtml_env(), timeout=120, check=False
    )


def test_rtml_validate_accepts_it_with_columns_and_output(
    exported: tuple[Path, LogisticRegression], tmp_path: Path
) -> None:
    ok = validate(manifest(tmp_path / "ok", exported[0], OUTPUT))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "fit its request features" in ok.stdout
    bad = validate(manifest(tmp_path / "bad", exported[0], None))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "(AmbiguousOutput)" in bad.stderr
    assert "set spec.output.name" in bad.stderr


def test_rtml_serve_answers_its_probability(
    exported: tuple[Path, LogisticRegression], tmp_path: Path
) -> None:
    path, clf = exported
    rows = np.random.default_rng(11).random((3, 4)).astype(np.float32)
    expected = clf.predict_proba(rows)[:, 1]
    proc = RuntimeProcess(manifest(tmp_path / "serve", path, OUTPUT), redis_url=None,
                          extra_args=["--no-register"])  # fmt: skip
    proc.start()
    try:
        instances = [{"features": dict(zip(COLUMNS, map(float, r), strict=True))} for r in rows]
        status, body, _ = proc.post("/predict", instances[0])
        assert status == 200, body
        assert body["score"] == pytest.approx(float(expected[0]), abs=1e-5)
        status, body, _ = proc.post("/predict_batch", {"instances": instances})
        assert status == 200, body
        got = [p["score"] for p in body["predictions"]]
        assert got == pytest.approx(expected.tolist(), abs=1e-5)
    finally:
        proc.stop()


def test_without_spec_output_the_runtime_stays_not_ready_and_says_why(
    exported: tuple[Path, LogisticRegression], tmp_path: Path
) -> None:
    proc = RuntimeProcess(manifest(tmp_path / "unready", exported[0], None), redis_url=None,
                          extra_args=["--no-register"])  # fmt: skip
    proc.start(wait_ready=False)
    try:

        def refused() -> dict[str, Any] | None:
            status, body = proc.get("/v2/health/ready")
            assert status == 503, body  # never ready
            return body if "spec.output" in str(body.get("reason")) else None  # else loading

        body = wait_for(refused, 60, 0.25, "the runtime to refuse the model")
        assert "set spec.output.name" in body["reason"], body
    finally:
        proc.stop()
