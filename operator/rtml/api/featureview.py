"""The FeatureView kind: online features registered in Feast (API.md, "FeatureView")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from rtml.api.common import BMP_CHARS, TEXT_PATTERN, ApiModel, Condition, Cron, Duration, cel
from rtml.api.model import Metadata

Identifier = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", max_length=63)
]
# The bounds that keep a FeatureView's spec within its annotation budget
# (docs/annotation-size.md): 256 features whose string defaults are at most 32 characters.
MAX_FEATURES = 256
MAX_DEFAULT_LENGTH = 32
DefaultText = Annotated[str, StringConstraints(max_length=MAX_DEFAULT_LENGTH, pattern=TEXT_PATTERN)]
Dtype = Literal["FLOAT", "DOUBLE", "INT32", "INT64", "STRING", "BOOL"]
NUMERIC = ("FLOAT", "DOUBLE", "INT32", "INT64")
SOURCE_PATH_PATTERN = rf"^(file|s3|gs)://[{BMP_CHARS}]+$"


class Entity(ApiModel):
    name: Identifier = Field(description="the Feast entity's name")
    join_key: Identifier = Field(description="the key the features are stored under")
    value_type: Literal["STRING", "INT64"] = Field(default="STRING", description="key type")


class Feature(ApiModel):
    # The API server cannot type-check `default` (CEL sees no fields of an untyped node), so the
    # dtype match is checked here, by the operator and by `rtml validate`.

    name: Identifier
    dtype: Dtype
    default: float | int | DefaultText | bool | None = Field(
        default=None,
        description="used for missing entities and fallback.mode defaultFeatures",
        json_schema_extra={"x-kubernetes-any-scalar": True},
    )

    @model_validator(mode="after")
    def _default_has_dtype(self) -> Feature:
        d = self.default
        if d is None:
            return self
        ok = {
            "STRING": isinstance(d, str),
            "BOOL": isinstance(d, bool),
        }.get(self.dtype)
        if ok is None:
            whole = self.dtype in ("INT32", "INT64")
            ok = not isinstance(d, bool | str) and (not whole or float(d).is_integer())
        if not ok:
            raise ValueError(f"default of feature {self.name!r} must have dtype {self.dtype}")
        return self


class Source(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.type != 'file' || has(self.path)",
                    "path is required when type is file",
                    ".path",
                )
            ]
        }
    )

    type: Literal["file", "push"] = Field(default="file", description="batch file or push")
    path: Annotated[str, StringConstraints(pattern=SOURCE_PATH_PATTERN, max_length=2048)] | None = (
        Field(default=None, description="parquet file: file://, s3:// or gs://")
    )
    timestamp_field: Identifier = Field(default="event_timestamp")

    @model_validator(mode="after")
    def _file_has_path(self) -> Source:
        if self.type == "file" and self.path is None:
            raise ValueError("path is required when type is file")
        return self


class Materialization(ApiModel):
    schedule: Cron = Field(default="*/15 * * * *", description="cron for incremental runs")
    enabled: bool = True


class FeatureViewSpec(ApiModel):
    entity: Entity
    features: list[Feature] = Field(
        min_length=1,
        max_length=MAX_FEATURES,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    ttl: Duration = Field(default="24h", description="Feast TTL")
    source: Source
    materialization: Materialization = Field(default_factory=Materialization)

    @model_validator(mode="after")
    def _unique_names(self) -> FeatureViewSpec:
        seen: set[str] = set()
        for f in self.features:
            if f.name in seen:
                raise ValueError(f"features: duplicate feature name {f.name!r}")
            seen.add(f.name)
        return self


class FeatureViewStatus(ApiModel):
    observed_generation: int | None = None
    feature_names: list[str] = Field(default_factory=list)
    last_materialization: datetime | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class FeatureView(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-rtml-kind": {
                "kind": "FeatureView",
                "plural": "featureviews",
                "singular": "featureview",
                "shortNames": ["rfv"],
                "categories": ["rtml"],
            }
        }
    )

    api_version: Literal["rtml.dev/v1alpha1"] = "rtml.dev/v1alpha1"
    kind: Literal["FeatureView"] = "FeatureView"
    metadata: Metadata = Field(default_factory=Metadata)
    spec: FeatureViewSpec
    status: FeatureViewStatus | None = None
