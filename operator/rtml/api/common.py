"""Building blocks shared by every kind: the camelCase base model, durations, conditions."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
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
ARTIFACT_URI_PATTERN = r"^(file|https?|s3|gs|pvc)://.+$"
# A DNS-1123 subdomain: what a resource name reference must be.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

Duration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN)]
Cron = Annotated[str, StringConstraints(pattern=CRON_PATTERN)]
ResourceName = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=253)]


def parse_duration(value: str) -> float:
    """Seconds in a Go-style duration such as ``1m30s``; raises ValueError naming the value."""
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"{value!r} is not a duration such as 30s, 5m or 24h")
    return sum(float(n) * _DURATION_SECONDS[u] for n, u in _DURATION_PART.findall(value))


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


class ArtifactRef(ApiModel):
    """Where a model artifact lives and the digest it must have."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.uri.startsWith('file://') || has(self.sha256)",
                    "sha256 is required unless the uri is file://",
                    ".sha256",
                )
            ]
        }
    )

    uri: Annotated[str, StringConstraints(pattern=ARTIFACT_URI_PATTERN, max_length=2048)] = Field(
        description="file://, http(s)://, s3://, gs:// or pvc://CLAIM/path"
    )
    sha256: Annotated[str, StringConstraints(pattern=SHA256_PATTERN)] | None = Field(
        default=None, description="64 lowercase hex digits; the runtime refuses other digests"
    )

    @model_validator(mode="after")
    def _digest_required(self) -> ArtifactRef:
        if not self.uri.startswith("file://") and self.sha256 is None:
            raise ValueError("sha256 is required unless the uri is file://")
        return self
