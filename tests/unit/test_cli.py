"""`rtml render`, `rtml crds`, `rtml validate` and the help texts, through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rtml.cli import main

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "models"


def test_render_prints_exactly_what_the_operator_applies() -> None:
    out = CliRunner().invoke(main, ["render", str(EXAMPLES / "fraud-bentoml.yaml"), "-n", "prod"])
    assert out.exit_code == 0, out.output
    docs = list(yaml.safe_load_all(out.output))
    assert [d["kind"] for d in docs] == [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    ]
    assert {d["metadata"]["namespace"] for d in docs} == {"prod"}


def test_render_keda_flag_switches_autoscaler(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump({"apiVersion": "rtml.dev/v1alpha1", "kind": "Model",
        "metadata": {"name": "m"}, "spec": {"version": "v1", "artifact": {"uri": "file:///m"},
        "autoscaling": {"metric": "rps"}}}))  # fmt: skip
    out = CliRunner().invoke(main, ["render", str(manifest), "--keda"])
    assert out.exit_code == 0, out.output
    assert [d["kind"] for d in yaml.safe_load_all(out.output)][-1] == "ScaledObject"


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
