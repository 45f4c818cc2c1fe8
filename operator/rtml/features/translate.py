"""The one translation from a FeatureView resource to Feast objects.

Pure: nothing is read or registered here. The operator, `rtml serve` and feature_repo/ (the plain
`feast` CLI) all call `to_feast`, so the three cannot disagree on a name or a dtype.

- Feast feature view: the resource's `metadata.name` with what Feast cannot take in a name
  (`-`, `.`) turned into `_` (`card-features` → `card_features`).
- Feast entity: `spec.entity.name`, join key `spec.entity.joinKey`, value type STRING or INT64;
  the join key is also declared in the schema, so `feast apply` never reads the source to infer it.
- Source: `file` → a FileSource; `push` → a PushSource wrapping a batch FileSource (Feast needs
  one behind every push source; without `spec.source.path` it points at `push/<name>.parquet`
  under `repo_dir`, which only materialisation from the batch side would read).
- Paths: `file:///abs` is absolute; `file://rel/x.parquet` is relative to `repo_dir` (the folder of
  the manifest); `s3://` and `gs://` URIs pass through.
- Tags keep what Feast has no field for, so it survives a round trip through the registry:
  the namespace, the resource name and every feature's default (JSON).

Feast is imported inside the functions: `import feast` costs seconds, and `feast_name` must stay
cheap for the runtime's Redis reader, which never loads the SDK.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from rtml.api.common import parse_duration
from rtml.api.featureview import Dtype, Feature, FeatureView

if TYPE_CHECKING:
    import feast
    from feast.data_source import DataSource
    from feast.types import PrimitiveFeastType

NAMESPACE_TAG = "rtml.dev/namespace"
NAME_TAG = "rtml.dev/name"
DEFAULTS_TAG = "rtml.dev/feature-defaults"

DefaultValue = float | int | str | bool | None

_NOT_IN_FEAST_NAMES = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class FeastObjects:
    """What one FeatureView becomes in Feast; `objects` is what `FeatureStore.apply` takes."""

    entity: feast.Entity
    feature_view: feast.FeatureView
    source: feast.FileSource | feast.PushSource

    @property
    def objects(self) -> list[feast.Entity | feast.FeatureView | DataSource]:
        return [self.entity, self.source, self.feature_view]


def feast_name(view: FeatureView) -> str:
    """The Feast feature view's name: Kubernetes names may hold `-` and `.`, Feast's may not."""
    return feast_name_for(view.metadata.name)


def feast_name_for(resource_name: str) -> str:
    """`feast_name` from the resource's name alone (a deleted resource has no spec to read)."""
    if not resource_name:
        raise ValueError("metadata.name of the FeatureView is empty; Feast needs a name")
    return _NOT_IN_FEAST_NAMES.sub("_", resource_name)


def push_source_name(view: FeatureView) -> str:
    """The Feast push source of a `source.type: push` view (what `FeatureStore.push` takes)."""
    return f"{feast_name(view)}_push"


def feast_dtype(dtype: Dtype) -> PrimitiveFeastType:
    """The Feast type a FeatureView dtype is stored as."""
    from feast import types

    return {
        "FLOAT": types.Float32,
        "DOUBLE": types.Float64,
        "INT32": types.Int32,
        "INT64": types.Int64,
        "STRING": types.String,
        "BOOL": types.Bool,
    }[dtype]


def _typed_default(feature: Feature) -> DefaultValue:
    # The API accepts 0 for a FLOAT and 1.0 for an INT64; callers want the dtype's own type.
    d = feature.default
    if d is None or isinstance(d, bool | str):
        return d
    if feature.dtype in ("INT32", "INT64"):
        return int(d)
    return float(d)


def feature_defaults(view: FeatureView) -> dict[str, DefaultValue]:
    """Every feature's default (None where none is set), in the view's order."""
    return {f.name: _typed_default(f) for f in view.spec.served_features}


def source_path(view: FeatureView, repo_dir: Path | None = None) -> str | None:
    """The parquet path Feast reads: local for `file://`, the URI itself for s3:// and gs://."""
    uri = view.spec.source.path
    if uri is None:
        return None
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != "file":
        return uri
    path = Path(urllib.parse.unquote(parts.netloc + parts.path))
    if path.is_absolute():
        return str(path)
    if repo_dir is None:
        raise ValueError(
            f"spec.source.path {uri!r} of FeatureView {view.metadata.name!r} is relative; "
            "give the folder it is relative to (the manifest's) as repo_dir, or use file:///abs"
        )
    return os.path.normpath(repo_dir / path)


def _file_source(name: str, path: str, timestamp_field: str) -> feast.FileSource:
    from feast import FileSource

    return FileSource(name=name, path=path, timestamp_field=timestamp_field)


def to_feast(view: FeatureView, *, repo_dir: Path | None = None) -> FeastObjects:
    """The Feast entity, feature view and source of a FeatureView resource.

    `repo_dir` is the folder relative `file://` paths are resolved against; a relative path
    without it is an error naming `spec.source.path`.
    """
    from feast import Entity, Field, PushSource, ValueType
    from feast import FeatureView as FeastFeatureView

    spec = view.spec
    name = feast_name(view)
    tags = {NAMESPACE_TAG: view.metadata.namespace, NAME_TAG: view.metadata.name}
    key_type = ValueType.STRING if spec.entity.value_type == "STRING" else ValueType.INT64
    entity = Entity(
        name=spec.entity.name,
        join_keys=[spec.entity.join_key],
        value_type=key_type,
        tags=tags,
    )
    timestamp_field = spec.source.timestamp_field
    path = source_path(view, repo_dir)
    source: feast.FileSource | feast.PushSource
    if spec.source.type == "file":
        assert path is not None  # the API model requires a path for type file
        source = _file_source(f"{name}_source", path, timestamp_field)
    else:
        if path is None:
            path = os.path.normpath((repo_dir or Path()) / "push" / f"{name}.parquet")
        batch = _file_source(f"{name}_batch", path, timestamp_field)
        source = PushSource(name=push_source_name(view), batch_source=batch, tags=tags)
    key_field = Field(name=spec.entity.join_key, dtype=feast_dtype(spec.entity.value_type))
    feature_view = FeastFeatureView(
        name=name,
        entities=[entity],
        schema=[
            key_field,
            *(Field(name=f.name, dtype=feast_dtype(f.dtype)) for f in spec.served_features),
        ],
        source=source,
        ttl=timedelta(seconds=parse_duration(spec.ttl)),
        online=True,
        description=f"FeatureView {view.metadata.namespace}/{view.metadata.name}, kept by rtml",
        tags={**tags, DEFAULTS_TAG: json.dumps(feature_defaults(view))},
    )
    return FeastObjects(entity=entity, feature_view=feature_view, source=source)


def defaults_from_tags(tags: dict[str, str]) -> dict[str, DefaultValue]:
    """The feature defaults `to_feast` stored in a Feast feature view's tags ({} if none)."""
    raw = tags.get(DEFAULTS_TAG)
    if raw is None:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError(f"tag {DEFAULTS_TAG} holds {raw!r}, not a JSON object")
    return value


def from_feast(feature_view: feast.FeatureView, join_key_type: str) -> FeatureView:
    """The FeatureView resource a registered Feast view was translated from (`to_feast` undone).

    Used where only the registry is at hand (`rtml push VIEW`). `join_key_type` is the entity's
    value type name (STRING or INT64).
    """
    dtypes = {
        str(feast_dtype(d)): d for d in ("FLOAT", "DOUBLE", "INT32", "INT64", "STRING", "BOOL")
    }
    tags = feature_view.tags
    defaults = defaults_from_tags(tags)
    batch = feature_view.batch_source
    if batch is None:
        raise ValueError(f"Feast view {feature_view.name!r} has no batch source; rtml made none")
    path = getattr(batch, "path", None)
    source: dict[str, object] = {
        "type": "push" if feature_view.stream_source is not None else "file",
        "timestampField": batch.timestamp_field,
    }
    if path:
        source["path"] = path if "://" in path else f"file://{path}"
    (entity,) = feature_view.entities
    (join_key,) = [c.name for c in feature_view.entity_columns]
    return FeatureView.model_validate(
        {
            "metadata": {
                "name": tags.get(NAME_TAG, feature_view.name),
                "namespace": tags.get(NAMESPACE_TAG, "default"),
            },
            "spec": {
                "entity": {"name": entity, "joinKey": join_key, "valueType": join_key_type},
                "features": [
                    {"name": f.name, "dtype": dtypes[str(f.dtype)], "default": defaults.get(f.name)}
                    for f in feature_view.features
                ],
                "ttl": f"{int(feature_view.ttl.total_seconds()) if feature_view.ttl else 0}s",
                "source": source,
            },
        }
    )
