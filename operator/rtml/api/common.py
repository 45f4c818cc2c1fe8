"""Building blocks shared by every kind: the camelCase base model, durations, conditions."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

# Go's time.ParseDuration units, without a sign: what Kubernetes users already write.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)")
_DURATION_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}

# Five-field cron (minute hour day-of-month month day-of-week), as a Kubernetes CronJob takes it,
# or one of the @-macros. Names (JAN, MON) are accepted in the month and weekday fields.
_CRON_ITEM = r"(\*|[0-9]+(-[0-9]+)?|[A-Za-z]{3}(-[A-Za-z]{3})?)(/[0-9]+)?"
_CRON_FIELD = rf"{_CRON_ITEM}(,{_CRON_ITEM})*"
CRON_PATTERN = (
    rf"^(@(yearly|annually|monthly|weekly|daily|hourly)|{_CRON_FIELD}( +{_CRON_FIELD}){{4}})$"
)

SHA256_PATTERN = r"^[a-f0-9]{64}$"
# Free text: any character of the Basic Multilingual Plane but a control. Kopf writes a character
# beyond it (an emoji) as 12 bytes of JSON, one inside it as at most 6: refusing those planes
# halves what every free-text field costs the spec's budget (docs/annotation-size.md).
BMP_CHARS = r" -~\x{A0}-\x{FFFD}"
TEXT_PATTERN = rf"^[{BMP_CHARS}]*$"
MULTILINE_TEXT_PATTERN = rf"^[\t\n\r{BMP_CHARS}]*$"
ARTIFACT_URI_PATTERN = rf"^(file|https?|s3|gs|pvc)://[{BMP_CHARS}]+$"
# A DNS-1123 subdomain: what a resource name reference must be.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

# Every field is bounded so that no spec outgrows the annotations that hold copies of it
# (docs/annotation-size.md; rtml.api.size proves the bound from the generated CRDs).
Duration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN, max_length=32)]
Cron = Annotated[str, StringConstraints(pattern=CRON_PATTERN, max_length=256)]
ResourceName = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=253)]
# Printable ASCII but the five characters JSON writers escape (" \ < > &): a name costs one
# byte a character in every copy of the spec, where a free string costs up to twelve.
FEATURE_NAME_PATTERN = r"^[ !#-%'-;=?-\[\]-~]+$"
# A feature, a request field or a column: as long as a FeatureView feature name may be.
FeatureName = Annotated[
    str, StringConstraints(pattern=FEATURE_NAME_PATTERN, min_length=1, max_length=63)
]


def parse_duration(value: str) -> float:
    """Seconds in a Go-style duration such as ``1m30s``; raises ValueError naming the value."""
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"{value!r} is not a duration such as 30s, 5m or 24h")
    return sum(float(n) * _DURATION_SECONDS[u] for n, u in _DURATION_PART.findall(value))


def map_keys(max_length: int, pattern: str, what: str) -> JsonDict:
    """The rule bounding a map's keys (a CRD has no propertyNames), in the one shape
    rtml.api.size reads: `what` says what a key is, for the message."""
    if "'" in pattern or "\\" in pattern:
        raise ValueError("a key pattern is written as a CEL raw string: no quote, no backslash")
    return cel(
        f"self.all(k, k.size() <= {max_length} && k.matches(r'{pattern}'))",
        f"every key must be {what} of at most {max_length} characters",
    )


def cel(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """One ``x-kubernetes-validations`` entry; fieldPath makes the API server name the field."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Condition(ApiModel):
    """The shape of metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: datetime | None = None
    observed_generation: int | None = None


ArtifactUri = Annotated[str, StringConstraints(pattern=ARTIFACT_URI_PATTERN, max_length=2048)]
Sha256 = Annotated[str, StringConstraints(pattern=SHA256_PATTERN, max_length=64)]
# Every scheme, file:// and pvc:// included: a path on a node or a shared volume can be
# rewritten as easily as an object in a bucket (docs/artifact-digest.md).
DIGEST_REQUIRED = (
    "sha256 is required for every artifact, file:// and pvc:// too: set it to the artifact's "
    "sha256 digest, or set allowUnverified: true to load the artifact without checking it"
)


def missing_digest(field: str) -> str:
    """The refusal of an artifact without a digest, naming where it is (`spec.artifact`)."""
    return (
        f"{field}.sha256 is required for every artifact, file:// and pvc:// too: set it to the "
        f"artifact's sha256 digest, or set {field}.allowUnverified: true to load the artifact "
        "without checking it"
    )


def unverified_warning(field: str, uri: str) -> str:
    """What is said of an artifact loaded without a digest (the log, the Model's condition)."""
    return (
        f"{field} ({uri}) has no sha256: its bytes are loaded without checking them, so "
        "whatever file is at that location serves; set its sha256 to pin it"
    )


# A record the operator writes, not an order: no digest rule applies, so one written before
# sha256 was required for every scheme still reads.
class ArtifactRecord(ApiModel):
    """The artifact that served the champion's traffic."""

    uri: ArtifactUri
    sha256: Sha256 | None = None


class ArtifactRef(ApiModel):
    """Where a model artifact lives and the digest it must have."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.sha256) || (has(self.allowUnverified) && self.allowUnverified)",
                    DIGEST_REQUIRED,
                    ".sha256",
                )
            ]
        }
    )

    uri: ArtifactUri = Field(description="file://, http(s)://, s3://, gs:// or pvc://CLAIM/path")
    # Declared before sha256: its validator reads it.
    allow_unverified: bool | None = Field(
        default=None,
        description="true: load the artifact without a sha256 (the Model says so in its "
        "ArtifactUnverified condition); ignored when sha256 is set",
    )
    sha256: Sha256 | None = Field(
        default=None,
        validate_default=True,
        description="64 lowercase hex digits, required unless allowUnverified is true; the "
        "runtime refuses other digests",
    )

    @field_validator("sha256")
    @classmethod
    def _digest_required(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("allow_unverified") is not True:
            raise ValueError(DIGEST_REQUIRED)
        return value

    @property
    def unverified(self) -> bool:
        """Whether this artifact loads without a digest check (the opt-out in effect)."""
        return self.sha256 is None
