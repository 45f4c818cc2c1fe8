"""`rtml materialize` / `rtml push`: what they take from the command line and the environment."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from rtml.cli import main
from rtml.features.cli import feast_view_names

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def test_a_resource_name_becomes_its_feast_name() -> None:
    assert feast_view_names("card-features") == ["card_features"]


def test_a_manifest_gives_its_feature_views() -> None:
    assert feast_view_names(str(REPO / "examples/fraud/model.yaml")) == ["card_features"]


def test_a_manifest_without_feature_views_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "m.yaml"
    empty.write_text("kind: Model\nmetadata: {name: m}\n")
    with pytest.raises(click.ClickException, match="holds no FeatureView"):
        feast_view_names(str(empty))


@pytest.mark.parametrize("command", ["materialize", "push"])
def test_store_options_default_to_the_operator_env(command: str) -> None:
    out = CliRunner().invoke(main, [command, "--help"])
    assert out.exit_code == 0
    for env in (
        "RTML_FEAST_STORE",
        "RTML_FEAST_PATH",
        "RTML_FEAST_REDIS_URL",
        "RTML_FEAST_REGISTRY",
    ):
        assert env in out.output
