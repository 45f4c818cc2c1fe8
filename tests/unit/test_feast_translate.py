"""The one FeatureView → Feast translation: names, dtypes, TTL, entity, sources, defaults in tags;
and the pure parts of the store profile (Redis URL, RepoConfig)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from feast import FileSource, PushSource, ValueType
from feast.types import Bool, Float32, Float64, Int32, Int64, PrimitiveFeastType, String
from pydantic import ValidationError

from rtml.api.featureview import FeatureView
from rtml.contract import FeastProfile
from rtml.features.store import redis_connection_string, repo_config
from rtml.features.translate import (
    DEFAULTS_TAG,
    NAME_TAG,
    NAMESPACE_TAG,
    defaults_from_tags,
    feast_name,
    feature_defaults,
    to_feast,
)

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def view(name: str = "card-features", namespace: str = "risk", **spec: Any) -> FeatureView:
    body: dict[str, Any] = {
        "entity": {"name": "card", "joinKey": "card_id"},
        "features": [{"name": "amount_mean_7d", "dtype": "FLOAT", "default": 0}],
        "source": {"type": "file", "path": "s3://bucket/cards.parquet"},
    }
    body.update(spec)
    return FeatureView.model_validate(
        {"metadata": {"name": name, "namespace": namespace}, "spec": body}
    )


@pytest.mark.parametrize(
    ("dtype", "feast_type"),
    [
        ("FLOAT", Float32),
        ("DOUBLE", Float64),
        ("INT32", Int32),
        ("INT64", Int64),
        ("STRING", String),
        ("BOOL", Bool),
    ],
)
def test_every_dtype_maps_to_its_feast_type(dtype: str, feast_type: PrimitiveFeastType) -> None:
    fv = to_feast(view(features=[{"name": "f", "dtype": dtype}])).feature_view
    assert [(f.name, f.dtype) for f in fv.features] == [("f", feast_type)]


@pytest.mark.parametrize(
    ("ttl", "expected"),
    [
        ("24h", timedelta(hours=24)),
        ("720h", timedelta(days=30)),
        ("1h30m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("0s", timedelta(0)),
    ],
)
def test_ttl_is_the_go_duration(ttl: str, expected: timedelta) -> None:
    assert to_feast(view(ttl=ttl)).feature_view.ttl == expected


def test_ttl_defaults_to_a_day() -> None:
    assert to_feast(view()).feature_view.ttl == timedelta(hours=24)


@pytest.mark.parametrize(
    ("value_type", "feast_value_type", "feast_type"),
    [("STRING", ValueType.STRING, String), ("INT64", ValueType.INT64, Int64)],
)
def test_entity_and_join_key(
    value_type: str, feast_value_type: ValueType, feast_type: PrimitiveFeastType
) -> None:
    objs = to_feast(
        view(entity={"name": "account", "joinKey": "account_id", "valueType": value_type})
    )
    assert objs.entity.name == "account"
    assert objs.entity.join_key == "account_id"
    assert objs.entity.value_type == feast_value_type
    fv = objs.feature_view
    assert fv.entities == ["account"]
    # Declared in the schema, so `feast apply` never reads the source to infer the key's type.
    assert [(c.name, c.dtype) for c in fv.entity_columns] == [("account_id", feast_type)]
    assert "account_id" not in [f.name for f in fv.features]


@pytest.mark.parametrize(
    ("k8s_name", "expected"),
    [("card-features", "card_features"), ("cards", "cards"), ("a.b-c", "a_b_c")],
)
def test_feast_names_replace_what_feast_cannot_take(k8s_name: str, expected: str) -> None:
    objs = to_feast(view(name=k8s_name))
    assert feast_name(view(name=k8s_name)) == objs.feature_view.name == expected
    assert objs.feature_view.tags[NAME_TAG] == k8s_name


def test_feature_names_keep_the_views_order() -> None:
    names = ["z_last", "a_first", "m_middle"]
    fv = to_feast(view(features=[{"name": n, "dtype": "FLOAT"} for n in names])).feature_view
    assert [f.name for f in fv.features] == names


def test_a_view_without_a_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"metadata\.name"):
        to_feast(view(name=""))


@pytest.mark.parametrize(
    ("uri", "repo_dir", "expected"),
    [
        ("s3://bucket/cards.parquet", None, "s3://bucket/cards.parquet"),
        ("gs://bucket/dir/cards.parquet", Path("/ignored"), "gs://bucket/dir/cards.parquet"),
        ("file:///data/cards.parquet", Path("/ignored"), "/data/cards.parquet"),
        ("file://build/features.parquet", Path("/repo/ex"), "/repo/ex/build/features.parquet"),
        ("file://../shared/f.parquet", Path("/repo/ex"), "/repo/shared/f.parquet"),
        ("file://my%20data/f.parquet", Path("/r"), "/r/my data/f.parquet"),
    ],
)
def test_file_source_paths(uri: str, repo_dir: Path | None, expected: str) -> None:
    spec_source = {"type": "file", "path": uri, "timestampField": "ts"}
    objs = to_feast(view(source=spec_source), repo_dir=repo_dir)
    assert isinstance(objs.source, FileSource)
    assert objs.source.path == expected
    assert objs.source.timestamp_field == "ts"
    assert objs.source.name == "card_features_source"
    assert objs.feature_view.batch_source is objs.source


def test_a_relative_path_needs_repo_dir_and_the_error_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"spec\.source\.path 'file://build/f\.parquet'"):
        to_feast(view(source={"type": "file", "path": "file://build/f.parquet"}))


def test_push_source_wraps_a_batch_file_source() -> None:
    objs = to_feast(view(source={"type": "push", "path": "s3://bucket/history.parquet"}))
    assert isinstance(objs.source, PushSource)
    assert objs.source.name == "card_features_push"
    batch = objs.source.batch_source
    assert isinstance(batch, FileSource)
    assert (batch.name, batch.path, batch.timestamp_field) == (
        "card_features_batch",
        "s3://bucket/history.parquet",
        "event_timestamp",
    )
    assert objs.feature_view.stream_source is objs.source


def test_push_source_without_a_path_gets_a_batch_path_under_repo_dir() -> None:
    objs = to_feast(view(source={"type": "push"}), repo_dir=Path("/srv/features"))
    assert isinstance(objs.source, PushSource)
    assert isinstance(objs.source.batch_source, FileSource)
    assert objs.source.batch_source.path == "/srv/features/push/card_features.parquet"


def test_objects_are_applied_entity_source_then_view() -> None:
    objs = to_feast(view())
    assert objs.objects == [objs.entity, objs.source, objs.feature_view]


def test_defaults_are_typed_and_survive_in_tags() -> None:
    v = view(
        features=[
            {"name": "count", "dtype": "INT64", "default": 3.0},
            {"name": "mean", "dtype": "FLOAT", "default": 0},
            {"name": "ratio", "dtype": "DOUBLE", "default": 1.5},
            {"name": "small", "dtype": "INT32"},
            {"name": "country", "dtype": "STRING", "default": "NL"},
            {"name": "flag", "dtype": "BOOL", "default": False},
        ]
    )
    defaults = feature_defaults(v)
    assert defaults == {
        "count": 3,
        "mean": 0.0,
        "ratio": 1.5,
        "small": None,
        "country": "NL",
        "flag": False,
    }
    assert isinstance(defaults["count"], int)
    assert isinstance(defaults["mean"], float)
    assert list(defaults) == ["count", "mean", "ratio", "small", "country", "flag"]
    tags = to_feast(v).feature_view.tags
    assert json.loads(tags[DEFAULTS_TAG]) == defaults
    assert defaults_from_tags(tags) == defaults
    assert defaults_from_tags({}) == {}


def test_tags_carry_namespace_and_name_on_view_and_entity() -> None:
    objs = to_feast(view(name="card-features", namespace="risk"))
    for tags in (objs.feature_view.tags, objs.entity.tags):
        assert (tags[NAMESPACE_TAG], tags[NAME_TAG]) == ("risk", "card-features")


def test_the_fraud_example_translates() -> None:
    manifest = REPO / "examples/fraud/model.yaml"
    doc = next(d for d in yaml.safe_load_all(manifest.read_text()) if d["kind"] == "FeatureView")
    objs = to_feast(FeatureView.model_validate(doc), repo_dir=manifest.parent)
    fv = objs.feature_view
    assert (fv.name, objs.entity.name, objs.entity.join_key) == ("card_features", "card", "card_id")
    assert len(fv.features) == 27
    assert fv.ttl == timedelta(days=30)
    assert isinstance(objs.source, FileSource)
    assert objs.source.path == str(manifest.parent / "build/features.parquet")
    assert all(v is not None for v in defaults_from_tags(fv.tags).values())


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "127.0.0.1:6379,db=0"),
        ("redis://redis", "redis:6379,db=0"),
        ("redis://:s%40cret@cache:6380/2", "cache:6380,db=2,password=s@cret"),
        ("rediss://app:pw@cache:6380/1", "cache:6380,db=1,username=app,password=pw,ssl=true"),
    ],
)
def test_redis_urls_become_feast_connection_strings(url: str, expected: str) -> None:
    assert redis_connection_string(FeastProfile(kind="redis", redis_url=url)) == expected


def test_the_password_from_its_own_variable_joins_the_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a pod the password comes from a Secret as RTML_FEAST_REDIS_PASSWORD, not in the URL."""
    monkeypatch.setenv("RTML_FEAST_STORE", "redis")
    monkeypatch.setenv("RTML_FEAST_REDIS_URL", "redis://cache:6380/2")
    monkeypatch.setenv("RTML_FEAST_REDIS_PASSWORD", "p@ss word")
    profile = FeastProfile()
    assert profile.redis_url_with_password == "redis://:p%40ss%20word@cache:6380/2"
    assert redis_connection_string(profile) == "cache:6380,db=2,password=p@ss word"
    assert "p@ss" not in repr(profile)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://cache:6379", "is not a Redis URL"),
        ("redis://cache/zero", "names database 'zero'"),
        ("redis://cache:port/0", "invalid port"),
        ("redis://:a,b@cache/0", "comma"),
    ],
)
def test_bad_redis_urls_are_refused_by_the_profile(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FeastProfile(kind="redis", redis_url=url)


def test_bad_redis_url_errors_hide_the_password() -> None:
    with pytest.raises(ValueError, match=r"\*\*\*") as e:
        redis_connection_string(
            FeastProfile.model_construct(redis_url="redis://:topsecret@cache/zero")
        )
    assert "topsecret" not in str(e.value)


def test_sqlite_profile_repo_config(tmp_path: Path) -> None:
    config = repo_config(FeastProfile(path=tmp_path), project="proj")
    assert config.project == "proj"
    assert config.registry.registry_type == "sql"
    assert config.registry.path == f"sqlite:///{tmp_path}/registry.db"
    assert (config.online_store.type, config.online_store.path) == (
        "sqlite",
        str(tmp_path / "online.db"),
    )
    assert config.offline_store.type == "file"
    assert config.entity_key_serialization_version == 3


def test_redis_profile_repo_config_with_an_explicit_registry(tmp_path: Path) -> None:
    profile = FeastProfile(
        kind="redis",
        path=tmp_path,
        redis_url="redis://10.0.0.5:6379/3",
        registry="postgresql+psycopg://feast@db/feast",
    )
    config = repo_config(profile)
    assert config.registry.path == "postgresql+psycopg://feast@db/feast"
    assert config.online_store.type == "redis"
    assert config.online_store.connection_string == "10.0.0.5:6379,db=3"
