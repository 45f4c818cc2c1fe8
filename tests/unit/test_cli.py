"""`rtml render`, `rtml crds`, `rtml validate` and the help texts, through the real CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rtml.cli import main
from tests.unit.runtime.onnx_fixtures import write_sum_model

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "models"


def test_render_prints_exactly_what_the_operator_applies() -> None:
    out = CliRunner().invoke(main, ["render", str(EXAMPLES / "fraud-bentoml.yaml"), "-n", "prod"])
    assert out.exit_code == 0, out.output
    docs = list(yaml.safe_load_all(out.output))
    assert [d["kind"] for d in docs] == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    ]
    assert {d["metadata"]["namespace"] for d in docs} == {"prod"}


def test_render_keda_flag_switches_autoscaler(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "rtml.dev/v1alpha1",
                "kind": "Model",
                "metadata": {"name": "m"},
                "spec": {
                    "version": "v1",
                    "artifact": {"uri": "file:///m", "sha256": "a" * 64},
                    "autoscaling": {"metric": "rps"},
                },
            }
        )
    )
    out = CliRunner().invoke(main, ["render", str(manifest), "--keda"])
    assert out.exit_code == 0, out.output
    kinds = [d["kind"] for d in yaml.safe_load_all(out.output)]
    assert kinds[-2:] == ["ScaledObject", "NetworkPolicy"]


def test_render_refuses_an_invalid_model_naming_the_field(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "apiVersion: rtml.dev/v1alpha1\nkind: Model\nmetadata: {name: bad}\n"
        "spec: {version: v1, artifact: {uri: 's3://b/m'}, backend: triton}\n"
    )
    out = CliRunner().invoke(main, ["render", str(manifest)])
    assert out.exit_code == 1
    assert "Model bad is invalid" in out.output
    assert "backend" in out.output
    assert "sha256 is required" in out.output


def test_crds_check_passes_on_the_checked_in_crds() -> None:
    out = CliRunner().invoke(main, ["crds", "--out", str(REPO / "crds"), "--check"])
    assert out.exit_code == 0, out.output


def test_crds_check_fails_on_drift(tmp_path: Path) -> None:
    for f in (REPO / "crds").glob("*.yaml"):
        (tmp_path / f.name).write_text(f.read_text().replace("rmodel", "rm"))
    out = CliRunner().invoke(main, ["crds", "--out", str(tmp_path), "--check"])
    assert out.exit_code == 1
    assert "models.rtml.dev.yaml" in out.output


def test_validate_examples() -> None:
    out = CliRunner().invoke(main, ["validate", str(EXAMPLES)])
    assert out.exit_code == 0, out.output
    assert "Model fraud: valid" in out.output


def test_validate_refuses_a_rule_that_does_not_compile_naming_its_field(tmp_path: Path) -> None:
    detector = REPO / "examples" / "fraud" / "detector.yaml"
    good = CliRunner().invoke(main, ["validate", str(detector)])
    assert good.exit_code == 0, good.output
    assert "Model fraud-detector: valid" in good.output
    text = detector.read_text()
    bad = text.replace("features.txn_count_1h > 10 &&", "txn_count_1h > 10 &&")
    assert bad != text
    (tmp_path / "detector.yaml").write_text(bad)
    out = CliRunner().invoke(main, ["validate", str(tmp_path / "detector.yaml")])
    assert out.exit_code == 1
    assert "spec.rules[1].expression" in out.output
    assert "undeclared reference to 'txn_count_1h'" in out.output


def signature_manifest(folder: Path, b_dtype: str, request: list[str]) -> Path:
    """A FeatureView and a Model whose relative file:// artifact takes inputs a, b, amount."""
    digest = hashlib.sha256(write_sum_model(folder / "m.onnx", ["a", "b", "amount"]).read_bytes())
    view = {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": "cards"},
        "spec": {
            "entity": {"name": "card", "joinKey": "card_id"},
            "source": {"type": "push"},
            "features": [{"name": "a", "dtype": "FLOAT"}, {"name": "b", "dtype": b_dtype}],
        },
    }
    model = {"apiVersion": "rtml.dev/v1alpha1", "kind": "Model", "metadata": {"name": "fraud"},
        "spec": {"version": "v1",
                 "artifact": {"uri": "file://m.onnx", "sha256": digest.hexdigest()},
                 "features": {"featureViewRef": "cards", "requestFeatures": request}}}  # fmt: skip
    manifest = folder / "model.yaml"
    manifest.write_text(yaml.safe_dump_all([view, model]))
    return manifest


def test_validate_checks_a_local_artifact_against_its_feature_view(tmp_path: Path) -> None:
    out = CliRunner().invoke(
        main, ["validate", str(signature_manifest(tmp_path, "INT64", ["amount"]))]
    )
    assert out.exit_code == 0, out.output
    assert "Model fraud: the ONNX inputs of m.onnx fit FeatureView 'cards'" in out.output


def test_validate_prints_each_signature_mismatch(tmp_path: Path) -> None:
    manifest = signature_manifest(tmp_path, "STRING", ["amount", "tip"])
    out = CliRunner().invoke(main, ["validate", str(manifest)])
    assert out.exit_code == 1, out.output
    assert "Model fraud: valid" in out.output  # the schema is fine; the signature is not
    assert (
        "Model fraud: ONNX input 'b' is float, but FeatureView 'cards' feature 'b' is STRING"
        in out.output
    )
    assert "request feature 'tip'" in out.output
    assert "(UnknownRequestFeature)" in out.output


def test_validate_checks_each_ensemble_member_naming_its_field(tmp_path: Path) -> None:
    manifest = signature_manifest(tmp_path, "INT64", ["amount"])
    fits_path = write_sum_model(tmp_path / "fits.onnx", ["a", "b", "amount"])
    fits = hashlib.sha256(fits_path.read_bytes())
    wrong = hashlib.sha256(write_sum_model(tmp_path / "wrong.onnx", ["a", "zz"]).read_bytes())
    docs = list(yaml.safe_load_all(manifest.read_text()))
    docs[1]["spec"]["ensemble"] = {"models": [
        {"name": "fits", "artifact": {"uri": "file://fits.onnx", "sha256": fits.hexdigest()}},
        {"name": "wrong", "artifact": {"uri": "file://wrong.onnx", "sha256": wrong.hexdigest()}},
    ]}  # fmt: skip
    manifest.write_text(yaml.safe_dump_all(docs))
    out = CliRunner().invoke(main, ["validate", str(manifest)])
    assert out.exit_code == 1, out.output
    assert "Model fraud: the ONNX inputs of m.onnx fit FeatureView 'cards'" in out.output
    assert (
        "Model fraud spec.ensemble.models[0].artifact: the ONNX inputs of fits.onnx fit"
        in out.output
    )
    assert "Model fraud spec.ensemble.models[1].artifact: ONNX input 'zz'" in out.output


def test_validate_skips_artifacts_that_are_not_on_this_machine(tmp_path: Path) -> None:
    manifest = signature_manifest(tmp_path, "STRING", ["amount"])
    (tmp_path / "m.onnx").unlink()
    out = CliRunner().invoke(main, ["validate", str(manifest)])
    assert out.exit_code == 0, out.output
    assert "signature not checked" in out.output


def test_validate_refuses_a_local_artifact_without_a_digest_naming_the_field(
    tmp_path: Path,
) -> None:
    manifest = signature_manifest(tmp_path, "INT64", ["amount"])
    docs = list(yaml.safe_load_all(manifest.read_text()))
    del docs[1]["spec"]["artifact"]["sha256"]
    manifest.write_text(yaml.safe_dump_all(docs))
    out = CliRunner().invoke(main, ["validate", str(manifest)])
    assert out.exit_code == 1, out.output
    assert "Model fraud: spec.artifact.sha256: " in out.output
    assert "sha256 is required for every artifact, file:// and pvc:// too" in out.output
    assert "allowUnverified: true" in out.output


def test_validate_warns_of_an_artifact_loaded_unverified(tmp_path: Path) -> None:
    manifest = signature_manifest(tmp_path, "INT64", ["amount"])
    docs = list(yaml.safe_load_all(manifest.read_text()))
    docs[1]["spec"]["artifact"] = {"uri": "file://m.onnx", "allowUnverified": True}
    manifest.write_text(yaml.safe_dump_all(docs))
    out = CliRunner().invoke(main, ["validate", str(manifest)])
    assert out.exit_code == 0, out.output  # a warning, not a refusal
    assert "Model fraud: valid" in out.output
    assert (
        "Model fraud: warning: spec.artifact (file://m.onnx) has no sha256: its bytes are "
        "loaded without checking them" in out.output
    )
    assert "Model fraud: the ONNX inputs of m.onnx fit FeatureView 'cards'" in out.output


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["render"],
        ["crds"],
        ["validate"],
        ["operator"],
        ["demo"],
        ["dev", "cluster", "up"],
        ["dev", "cluster", "down"],
        ["dev", "tools", "build"],
    ],
)
def test_help_texts(argv: list[str]) -> None:
    out = CliRunner().invoke(main, [*argv, "--help"])
    assert out.exit_code == 0, out.output
    assert "Usage:" in out.output
