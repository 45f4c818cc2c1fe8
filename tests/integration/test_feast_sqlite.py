"""Feast with a local SQLite registry and online store: the fraud example's FeatureView applied,
read back from the registry, materialised and served online; and `feast apply` on a scratch copy
of feature_repo/ (the plain CLI path)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from feast import FeatureStore, FileSource, ValueType
from feast.types import String

from rtml.api.featureview import FeatureView
from rtml.contract import FeastProfile
from rtml.features.store import (
    FeatureStoreError,
    apply_views,
    make_store,
    materialize,
)
from rtml.features.translate import (
    NAMESPACE_TAG,
    defaults_from_tags,
    feast_dtype,
    feature_defaults,
)
from tests.runtime_proc import rtml_env

pytestmark = pytest.mark.feast
REPO = Path(__file__).resolve().parents[2]
VIEW = "card_features"


@pytest.fixture(scope="module")
def example(fraud_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/fraud/model.yaml beside a build/ folder holding the freshly built example."""
    folder = tmp_path_factory.mktemp("example")
    shutil.copy(REPO / "examples/fraud/model.yaml", folder / "model.yaml")
    (folder / "build").symlink_to(fraud_build, target_is_directory=True)
    return folder


def read_view(manifest: Path, **metadata: str) -> FeatureView:
    doc = next(d for d in yaml.safe_load_all(manifest.read_text()) if d["kind"] == "FeatureView")
    doc["metadata"].update(metadata)
    return FeatureView.model_validate(doc)


@pytest.fixture(scope="module")
def view(example: Path) -> FeatureView:
    return read_view(example / "model.yaml")


@pytest.fixture(scope="module")
def store(
    example: Path, view: FeatureView, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FeatureStore]:
    store = make_store(FeastProfile(path=tmp_path_factory.mktemp("feast")))
    # Relative `file://build/features.parquet` resolves against the manifest's folder.
    assert apply_views(store, [view], base_dir=example) == [VIEW]
    materialize(store, [view])
    yield store
    store.teardown()


def latest_rows(parquet: Path) -> pd.DataFrame:
    frame = pd.read_parquet(parquet).sort_values("event_timestamp")
    return frame.drop_duplicates("card_id", keep="last").set_index("card_id")


def online(store: FeatureStore, view: FeatureView, card_ids: list[str]) -> dict[str, Any]:
    refs = [f"{VIEW}:{f.name}" for f in view.spec.features]
    rows = [{"card_id": c} for c in card_ids]
    return store.get_online_features(features=refs, entity_rows=rows).to_dict()


def test_the_registry_holds_the_translated_view(
    store: FeatureStore, view: FeatureView, example: Path
) -> None:
    fv = store.get_feature_view(VIEW, allow_registry_cache=False)
    assert [(f.name, f.dtype) for f in fv.features] == [
        (f.name, feast_dtype(f.dtype)) for f in view.spec.features
    ]
    assert [(c.name, c.dtype) for c in fv.entity_columns] == [("card_id", String)]
    assert fv.entities == ["card"]
    assert fv.ttl == timedelta(days=30)
    assert isinstance(fv.batch_source, FileSource)
    assert fv.batch_source.path == str(example / "build/features.parquet")
    assert fv.tags[NAMESPACE_TAG] == "default"
    assert defaults_from_tags(fv.tags) == feature_defaults(view)
    entity = store.get_entity("card")
    assert (entity.join_key, entity.value_type) == ("card_id", ValueType.STRING)


def test_online_features_are_the_latest_rows(
    store: FeatureStore, view: FeatureView, fraud_build: Path
) -> None:
    parquet = fraud_build / "features.parquet"
    latest = latest_rows(parquet)
    everything = pd.read_parquet(parquet)
    with_history = everything[everything["card_id"].duplicated()]["card_id"].iloc[0]
    cards = [with_history, "card_00042"]
    older = everything[everything["card_id"] == with_history].sort_values("event_timestamp")
    names = [f.name for f in view.spec.features]
    # The older snapshot differs, so reading it back instead of the latest would fail below.
    assert older[names].iloc[0].to_list() != older[names].iloc[-1].to_list()

    got = online(store, view, cards)
    assert got["card_id"] == cards
    for i, card in enumerate(cards):
        for name in names:
            expected = latest.at[card, name].item()
            assert got[name][i] == pytest.approx(expected, rel=1e-6), (card, name)


def test_an_unknown_entity_reads_none(store: FeatureStore, view: FeatureView) -> None:
    got = online(store, view, ["no-such-card"])
    assert all(got[f.name] == [None] for f in view.spec.features)


def test_later_runs_are_incremental(store: FeatureStore, view: FeatureView) -> None:
    before = store.get_feature_view(VIEW, allow_registry_cache=False)
    assert before.most_recent_end_time is not None
    end = datetime.now(UTC) + timedelta(seconds=1)
    assert materialize(store, [VIEW], end=end) == end
    after = store.get_feature_view(VIEW, allow_registry_cache=False)
    assert after.most_recent_end_time == end
    assert after.materialization_intervals[-1] == (before.most_recent_end_time, end)


def test_another_namespace_cannot_take_the_feast_name(store: FeatureStore, example: Path) -> None:
    intruder = read_view(example / "model.yaml", namespace="team-b")
    with pytest.raises(FeatureStoreError, match=r"team-b/card-features .* default/card-features"):
        apply_views(store, [intruder], base_dir=example)


def test_materialising_an_unregistered_view_is_an_error(store: FeatureStore) -> None:
    with pytest.raises(FeatureStoreError, match="no feature view 'nope'"):
        materialize(store, ["nope"])


def test_feast_cli_applies_and_materialises_feature_repo(
    example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "feature_repo"
    (repo / "data").mkdir(parents=True)
    for name in ("feature_store.yaml", "fraud.py"):
        shutil.copy(REPO / "feature_repo" / name, repo / name)
    feast_cli = Path(sys.executable).with_name("feast")
    # fraud.py finds the rtml package relative to its own folder when not installed: point it
    # at the checkout through PYTHONPATH instead, as a user with `pip install -e .` would have.
    env = rtml_env(RTML_FRAUD_EXAMPLE=str(example))
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    for args in (["apply"], ["materialize-incremental", now]):
        done = subprocess.run(
            [str(feast_cli), *args],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert done.returncode == 0, f"feast {args[0]} failed:\n{done.stdout}\n{done.stderr}"
    with sqlite3.connect(repo / "data" / "online.db") as db:
        (entities,) = db.execute(
            "SELECT COUNT(DISTINCT entity_key) FROM rtml_card_features"
        ).fetchone()
    assert entities == 5000
    # The registry's relative SQLite URL is relative to the working directory, as in the CLI.
    monkeypatch.chdir(repo)
    cli_store = FeatureStore(repo_path=str(repo))
    got = cli_store.get_online_features(
        features=[f"{VIEW}:txn_count_30d"], entity_rows=[{"card_id": "card_00042"}]
    ).to_dict()
    expected = latest_rows(example / "build/features.parquet").at["card_00042", "txn_count_30d"]
    assert got["txn_count_30d"] == [expected]
