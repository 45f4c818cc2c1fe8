"""The FeatureView kind: online features registered in Feast (API.md, "FeatureView")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from rtml.api.common import (
    BMP_CHARS,
    DURATION_PATTERN,
    TEXT_PATTERN,
    ApiModel,
    Condition,
    Cron,
    Duration,
    cel,
)
from rtml.api.model import Metadata
from rtml.api.windows import window_seconds

Identifier = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", max_length=63)
]
# The bounds that keep a FeatureView's spec within its annotation budget
# (docs/annotation-size.md): 256 features whose string defaults are at most 32 characters.
MAX_FEATURES = 256
MAX_DEFAULT_LENGTH = 32
# Sliding-window aggregations a stream keeps (docs/streaming.md): 32 fit the spec's budget with
# room to spare (each costs at most ~190 bytes; the worst-case view stays under 100 KiB).
MAX_AGGREGATIONS = 32
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


AggregationFunction = Literal["count", "sum", "avg", "max"]
WindowText = Annotated[str, StringConstraints(pattern=DURATION_PATTERN, max_length=16)]


class Aggregation(ApiModel):
    """A sliding-window aggregate of a stream's events, kept by `rtml stream` and served as a
    feature of the view (INT64 for count, FLOAT otherwise; default 0)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.function == 'count' || has(self.field)",
                    "field is required unless function is count",
                    ".field",
                ),
                cel(
                    "self.function != 'count' || !has(self.field)",
                    "count takes no field: it counts events",
                    ".field",
                ),
            ]
        }
    )

    name: Identifier = Field(description="the feature this aggregate is served as")
    function: AggregationFunction = Field(description="count, sum, avg or max")
    field: Identifier | None = Field(
        default=None, description="the numeric event field aggregated (not for count)"
    )
    window: WindowText = Field(
        description="sliding window, 1s to 720h: 1 s buckets up to 5m, 1 m up to 24h, 1 h above"
    )

    @model_validator(mode="after")
    def _field_and_window(self) -> Aggregation:
        if self.function == "count" and self.field is not None:
            raise ValueError(f"aggregation {self.name!r}: count takes no field: it counts events")
        if self.function != "count" and self.field is None:
            raise ValueError(f"aggregation {self.name!r}: field is required for {self.function}")
        try:
            window_seconds(self.window)
        except ValueError as e:
            raise ValueError(f"aggregation {self.name!r}: {e}") from None
        return self

    @property
    def dtype(self) -> Dtype:
        return "INT64" if self.function == "count" else "FLOAT"

    @property
    def window_s(self) -> int:
        return window_seconds(self.window)

    def as_feature(self) -> Feature:
        return Feature(name=self.name, dtype=self.dtype, default=0)


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
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.features.size() > 0 || (has(self.aggregations) && "
                    "self.aggregations.size() > 0)",
                    "declare at least one feature or aggregation",
                    ".features",
                ),
                cel(
                    "!has(self.aggregations) || "
                    "self.aggregations.all(a, !self.features.exists(f, f.name == a.name))",
                    "an aggregation's name must differ from every feature's",
                    ".aggregations",
                ),
            ]
        }
    )

    entity: Entity
    features: list[Feature] = Field(
        max_length=MAX_FEATURES,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    aggregations: list[Aggregation] = Field(
        default_factory=list,
        max_length=MAX_AGGREGATIONS,
        description="sliding-window aggregates of a stream's events, each served as a feature",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    ttl: Duration = Field(default="24h", description="Feast TTL")
    source: Source
    materialization: Materialization = Field(default_factory=Materialization)

    @model_validator(mode="after")
    def _unique_names(self) -> FeatureViewSpec:
        if not self.features and not self.aggregations:
            raise ValueError("features: declare at least one feature or aggregation")
        seen: set[str] = set()
        for f in self.features:
            if f.name in seen:
                raise ValueError(f"features: duplicate feature name {f.name!r}")
            seen.add(f.name)
        for a in self.aggregations:
            if a.name in seen:
                raise ValueError(
                    f"aggregations: the name {a.name!r} is already a feature's or an aggregation's"
                )
            seen.add(a.name)
        return self

    @property
    def served_features(self) -> list[Feature]:
        """Every feature the view serves: the declared ones, then one per aggregation."""
        if not self.aggregations:
            return self.features
        return [*self.features, *(a.as_feature() for a in self.aggregations)]


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
