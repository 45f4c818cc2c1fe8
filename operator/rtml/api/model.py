"""The Model kind: one real-time predictor (API.md, "Model")."""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic_core import PydanticCustomError

from rtml.api.common import (
    FEATURE_NAME_PATTERN,
    MULTILINE_TEXT_PATTERN,
    TEXT_PATTERN,
    ApiModel,
    ArtifactRecord,
    ArtifactRef,
    Condition,
    Duration,
    FeatureName,
    ResourceName,
    Sha256,
    cel,
    map_keys,
    parse_duration,
)
from rtml.api.expressions import ExpressionError, compile_expression

Percent = Annotated[int, Field(ge=1, le=100)]
Millis = Annotated[int, Field(ge=1, le=600_000)]
Step = Annotated[int, Field(ge=1, le=100)]
DEFAULT_STEPS = (5, 25, 50, 100)
# The bounds that keep a Model's spec within its annotation budget (docs/annotation-size.md).
MAX_COLUMNS = 256
MAX_REQUEST_FEATURES = 256
MAX_ENV = 8  # 16 until spec.rules needed the room (docs/annotation-size.md)
MAX_ENV_NAME = 128
MAX_ENV_VALUE = 256
MAX_IMAGE = 512
MAX_RESOURCES = 8
MAX_RESOURCE_NAME = 317  # a qualified name: a 253-character prefix, "/", a 63-character name
STEPS_ASCENDING = cel("self.isSorted()", "steps must be in ascending order")
# Decisions (docs/decisions.md). Sized to the ~6 KB the spec's budget had left plus what
# runtime.env gave up (MAX_ENV 16 -> 8; docs/annotation-size.md): an expression may hold
# `&&`, `<`, `>`, which kubectl's writer spends 6 bytes on, so 8 of 192 characters cost ~9 KB.
MAX_RULES = 8
MAX_EXPRESSION = 192
MAX_REASON = 128
MAX_ENSEMBLE = 2  # extra models beside spec.artifact: a two- or three-model ensemble
MAX_MEMBER_URI = 512
MAX_THRESHOLDS = 4
MAX_STREAM = 128
PRIMARY = "primary"  # the name spec.artifact's score goes by in modelScores
# A rule's or an ensemble member's name: it labels metrics and keys the response's maps.
PART_NAME_PATTERN = r"^[a-z0-9]([-_a-z0-9]*[a-z0-9])?$"
PartName = Annotated[str, StringConstraints(pattern=PART_NAME_PATTERN, max_length=63)]
# A reason is said to the caller and the audit log: plain ASCII text, one byte a character.
Reason = Annotated[str, StringConstraints(pattern=FEATURE_NAME_PATTERN, max_length=MAX_REASON)]
Severity = Literal["low", "medium", "high"]
RiskLevel = Literal["low", "medium", "high"]
Action = Literal["approve", "review", "block"]
# A Redis Stream key: printable ASCII (no space), as a FeatureName is.
StreamName = Annotated[
    str, StringConstraints(pattern=r"^[!#-%'-;=?-\[\]-~]+$", max_length=MAX_STREAM)
]
VersionLabel = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$", max_length=63),
]
GroupName = Annotated[str, StringConstraints(pattern=r"^[!#-%'-;=?-\[\]-~]+$", max_length=63)]
MAX_STREAM_REPLICAS = 16


class Artifact(ArtifactRef):
    format: Literal["onnx"] = Field(default="onnx", description="the artifact's format")


class FeatureBinding(ApiModel):
    feature_view_ref: ResourceName | None = Field(
        default=None, description="a FeatureView in the same namespace"
    )
    entity_key: FeatureName | None = Field(
        default=None, description="request field holding the entity id"
    )
    request_features: list[FeatureName] = Field(
        default_factory=list,
        max_length=MAX_REQUEST_FEATURES,
        description="features the caller sends in the request itself",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    columns: list[FeatureName] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_COLUMNS,
        description=(
            "for a model whose only ONNX input is [N, k] (the default export of skl2onnx, "
            "onnxmltools and torch.onnx): the feature in each column, in order; the model's "
            "rtml.features metadata, if any, must agree"
        ),
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )


class Output(ApiModel):
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=TEXT_PATTERN,
        description="the ONNX output that is the score (default: 'score', else the only float one)",
    )
    column: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="the column of that output that is the score (a classifier's class index)",
    )


class Slo(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.featureBudgetMs <= self.timeoutMs",
                    "featureBudgetMs must not exceed timeoutMs",
                    ".featureBudgetMs",
                ),
                cel(
                    "self.p99LatencyMs <= self.timeoutMs",
                    "p99LatencyMs must not exceed timeoutMs",
                    ".p99LatencyMs",
                ),
            ]
        }
    )

    p99_latency_ms: Millis = Field(default=50, description="the latency objective")
    timeout_ms: Millis = Field(default=100, description="hard deadline for one request")
    feature_budget_ms: Millis = Field(default=20, description="deadline for the feature read")

    @model_validator(mode="after")
    def _budgets_fit(self) -> Slo:
        if self.feature_budget_ms > self.timeout_ms:
            raise ValueError("featureBudgetMs must not exceed timeoutMs")
        if self.p99_latency_ms > self.timeout_ms:
            raise ValueError("p99LatencyMs must not exceed timeoutMs")
        return self


class CircuitBreaker(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.minimumCalls <= self.windowSize",
                    "minimumCalls must not exceed windowSize",
                    ".minimumCalls",
                )
            ]
        }
    )

    failure_rate_threshold: Percent = Field(default=50, description="% failed calls to open")
    slow_call_ms: Millis | None = Field(
        default=None, description="a call slower than this is slow; default p99LatencyMs"
    )
    slow_call_rate_threshold: Percent = Field(default=100, description="% slow calls to open")
    window_size: int = Field(default=100, ge=1, le=10_000, description="calls in the window")
    minimum_calls: int = Field(default=20, ge=1, le=10_000, description="calls before judging")
    open_duration: Duration = Field(default="30s", description="time open before half-open")
    half_open_calls: int = Field(default=5, ge=1, le=1000, description="probe calls half-open")

    @model_validator(mode="after")
    def _window_fits(self) -> CircuitBreaker:
        if self.minimum_calls > self.window_size:
            raise ValueError("minimumCalls must not exceed windowSize")
        return self


class Fallback(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.mode != 'static' || has(self.value)",
                    "value is required when mode is static",
                    ".value",
                ),
                cel(
                    "self.mode != 'model' || has(self.artifact)",
                    "artifact is required when mode is model",
                    ".artifact",
                ),
            ]
        }
    )

    mode: Literal["static", "defaultFeatures", "model", "reject"] = Field(
        default="reject", description="what is answered when a dependency is open or late"
    )
    value: float | None = Field(default=None, description="the score returned by mode static")
    artifact: ArtifactRef | None = Field(default=None, description="backup model for mode model")

    @model_validator(mode="after")
    def _mode_has_what_it_needs(self) -> Fallback:
        if self.mode == "static" and self.value is None:
            raise ValueError("value is required when mode is static")
        if self.mode == "model" and self.artifact is None:
            raise ValueError("artifact is required when mode is model")
        return self


class RateLimit(ApiModel):
    requests_per_second: float = Field(gt=0, le=1_000_000, description="tokens per second")
    burst: int | None = Field(default=None, ge=1, le=1_000_000, description="bucket size")


class Autoscaling(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.minReplicas <= self.maxReplicas",
                    "minReplicas must not exceed maxReplicas",
                    ".minReplicas",
                )
            ]
        }
    )

    min_replicas: int = Field(default=1, ge=1, le=1000, description="fewest replicas")
    max_replicas: int = Field(default=5, ge=1, le=1000, description="most replicas")
    metric: Literal["concurrency", "rps", "cpu", "p99Latency"] = Field(
        default="concurrency", description="what the autoscaler follows"
    )
    target: float | None = Field(
        default=None, gt=0, description="target per replica (in-flight, req/s, CPU %, ms)"
    )

    @model_validator(mode="after")
    def _bounds_ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        return self


class Warmup(ApiModel):
    requests: int = Field(default=50, ge=0, le=100_000, description="synthetic predictions")


class EnvVar(ApiModel):
    name: str = Field(
        min_length=1, max_length=MAX_ENV_NAME, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
    )
    value: str = Field(default="", max_length=MAX_ENV_VALUE, pattern=MULTILINE_TEXT_PATTERN)


# The characters of an image reference (registry/path:tag@algorithm:digest): nothing else pulls.
IMAGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$"
Quantity = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$", max_length=64),
]
# A qualified name (cpu, memory, nvidia.com/gpu) as Kubernetes takes it for a resource:
# an optional DNS-subdomain prefix and a name, written without backslashes (a CEL raw string).
RESOURCE_KEY_PATTERN = (
    "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    "[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
RESOURCE_KEYS = map_keys(
    MAX_RESOURCE_NAME, RESOURCE_KEY_PATTERN, "a resource name such as cpu or nvidia.com/gpu"
)
ResourceList = Annotated[
    dict[str, Quantity],
    Field(
        max_length=MAX_RESOURCES, json_schema_extra={"x-kubernetes-validations": [RESOURCE_KEYS]}
    ),
]


class Resources(ApiModel):
    requests: ResourceList = Field(default_factory=dict)
    limits: ResourceList = Field(default_factory=dict)

    @field_validator("requests", "limits")
    @classmethod
    def _resource_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if len(key) > MAX_RESOURCE_NAME or not re.fullmatch(RESOURCE_KEY_PATTERN, key):
                raise ValueError(f"{key!r} is not a resource name such as cpu or nvidia.com/gpu")
        return value


class RuntimeOverrides(ApiModel):
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IMAGE,
        pattern=IMAGE_PATTERN,
        description="runtime image",
    )
    resources: Resources | None = None
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=MAX_ENV,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    service_account_name: ResourceName | None = None


class AnalysisMetric(ApiModel):
    name: Literal["p99LatencyMs", "errorRate", "fallbackRate", "scoreMeanShift"]
    max: float = Field(ge=0, description="the step passes when the candidate stays at or under")


class Analysis(ApiModel):
    metrics: list[AnalysisMetric] = Field(
        default_factory=list,
        max_length=4,  # one per metric name
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    min_requests: int = Field(default=100, ge=1, description="candidate requests before deciding")
    failure_limit: int = Field(default=1, ge=1, description="failed analyses before rollback")
    on_metrics_unavailable: Literal["pause", "rollback"] = Field(
        default="pause", description="fail-closed behaviour when Prometheus cannot answer"
    )


def check_steps(steps: list[int]) -> list[int]:
    if any(b <= a for a, b in pairwise(steps)):
        raise ValueError("steps must be in ascending order")
    return steps


class Rollout(ApiModel):
    strategy: Literal["replace", "canary"] = Field(
        default="replace", description="how a change of spec.artifact reaches traffic"
    )
    steps: list[Step] = Field(
        default=list(DEFAULT_STEPS),
        min_length=1,
        max_length=20,
        json_schema_extra={
            "x-kubernetes-list-type": "set",
            "x-kubernetes-validations": [STEPS_ASCENDING],
        },
    )
    step_interval: Duration = "1m"
    analysis: Analysis = Field(default_factory=Analysis)

    @model_validator(mode="after")
    def _ascending(self) -> Rollout:
        check_steps(self.steps)
        return self


class Rule(ApiModel):
    name: PartName = Field(description="labels rtml_rule_hits_total and the response's ruleHits")
    expression: str = Field(
        min_length=1,
        max_length=MAX_EXPRESSION,
        pattern=r"^[ -~]+$",
        description="a CEL condition over `request` (the values sent, and the entity id) and "
        "`features` (every value the model scores), e.g. request.amount > 10000.0",
    )
    severity: Severity = Field(
        description="high: a hit blocks at once, no model is called; medium: at least review; "
        "low: a reason only"
    )
    reason: Reason | None = Field(default=None, description="said when the rule hits")


class MemberArtifact(ArtifactRef):
    """An ensemble member's artifact: as spec.artifact, with a shorter URI (the spec's budget)."""

    uri: Annotated[
        str,
        StringConstraints(pattern=r"^(file|https?|s3|gs|pvc)://[!-~]+$", max_length=MAX_MEMBER_URI),
    ] = Field(description="file://, http(s)://, s3://, gs:// or pvc://CLAIM/path (ASCII)")
    sha256: Sha256 | None = Field(
        default=None,
        validate_default=True,
        description="64 lowercase hex digits, required unless allowUnverified is true",
    )


class EnsembleMember(ApiModel):
    name: PartName = Field(description="its key in modelScores and its metrics' label")
    version: VersionLabel | None = Field(default=None, description="label of its artifact")
    artifact: MemberArtifact
    weight: float = Field(default=1.0, gt=0, le=1000, description="its weight in the average")

    @field_validator("name")
    @classmethod
    def _not_primary(cls, value: str) -> str:
        if value == PRIMARY:
            raise ValueError(f"{PRIMARY!r} is the name of spec.artifact's score")
        return value


class Ensemble(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.minHealthy) || self.minHealthy <= size(self.models) + 1",
                    "minHealthy must not exceed the number of models, spec.artifact included",
                    ".minHealthy",
                )
            ]
        }
    )

    weight: float = Field(default=1.0, gt=0, le=1000, description="spec.artifact's weight")
    models: list[EnsembleMember] = Field(
        min_length=1,
        max_length=MAX_ENSEMBLE,
        description="models scored beside spec.artifact, each with its own breaker",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    min_healthy: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ENSEMBLE + 1,
        description="fewer models scoring than this: the conservative decision; default more "
        "than half failing (half of the models, rounded up, must score)",
    )
    timeout_ms: Millis | None = Field(
        default=None,
        description="a model that has not scored this long after scoring began is late "
        "(counted as failing); default spec.slo.p99LatencyMs",
    )

    @model_validator(mode="after")
    def _healthy_fits(self) -> Ensemble:
        if self.min_healthy is not None and self.min_healthy > len(self.models) + 1:
            raise ValueError(
                "minHealthy must not exceed the number of models, spec.artifact included"
            )
        return self

    @property
    def required(self) -> int:
        """Models that must score: minHealthy, or half of all of them rounded up."""
        n = len(self.models) + 1
        return self.min_healthy if self.min_healthy is not None else (n + 1) // 2


class Threshold(ApiModel):
    min_score: float = Field(description="a score at or above this takes this action")
    action: Action
    risk_level: RiskLevel
    reason: Reason | None = None


class ConservativeDecision(ApiModel):
    action: Action = Field(default="review", description="answered when too few models score")
    risk_level: RiskLevel = "high"
    reason: Reason = "too few models could score this request"


def _default_thresholds() -> list[Threshold]:
    return [
        Threshold(min_score=0.5, action="review", risk_level="medium", reason="elevated risk"),
        Threshold(min_score=0.8, action="block", risk_level="high", reason="high risk"),
    ]


class Decision(ApiModel):
    thresholds: list[Threshold] = Field(
        default_factory=_default_thresholds,
        min_length=1,
        max_length=MAX_THRESHOLDS,
        description="ascending by minScore; the last one the score reaches decides, and a score "
        "below the first is approved at riskLevel low",
        json_schema_extra={
            "x-kubernetes-list-type": "atomic",
            "x-kubernetes-validations": [
                cel(
                    "self.all(a, self.all(b, a == b || a.minScore != b.minScore))"
                    " && self.map(t, t.minScore).isSorted()",
                    "thresholds must be in ascending order of minScore",
                )
            ],
        },
    )
    conservative: ConservativeDecision = Field(default_factory=ConservativeDecision)

    @field_validator("thresholds")
    @classmethod
    def _ascending(cls, value: list[Threshold]) -> list[Threshold]:
        if any(b.min_score <= a.min_score for a, b in pairwise(value)):
            raise ValueError("thresholds must be in ascending order of minScore")
        return value


class Audit(ApiModel):
    stream: StreamName = Field(
        default="rtml:audit", description="the Redis Stream every assessment is appended to"
    )
    max_len: int = Field(
        default=100_000, ge=1, le=100_000_000, description="the stream's approximate bound"
    )
    alert_stream: StreamName | None = Field(
        default=None, description="decisions at or above alertAt are also appended here"
    )
    alert_at: Action = Field(default="block", description="the least decision that alerts")
    include_inputs: bool = Field(
        default=False, description="also record the raw inputs (else only their sha256)"
    )


class StreamConsumer(ApiModel):
    """spec.stream: pods that run `rtml stream` on this Model (docs/streaming.md)."""

    input: StreamName | None = Field(
        default=None, description="the Redis Stream of events; default rtml:MODEL:events"
    )
    group: GroupName | None = Field(
        default=None, description="the consumer group; default rtml-MODEL"
    )
    output: StreamName | None = Field(
        default=None, description="where results are published; default rtml:MODEL:results"
    )
    replicas: int = Field(
        default=1, ge=1, le=MAX_STREAM_REPLICAS, description="consumers in the group (pods)"
    )


class ModelSpec(ApiModel):
    version: Annotated[
        str,
        StringConstraints(
            pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$", max_length=63
        ),
    ] = Field(description="label of this artifact (v3); shows in metrics and responses")
    artifact: Artifact
    backend: Literal["bentoml", "kserve"] = Field(default="bentoml", description="what runs it")
    features: FeatureBinding | None = None
    output: Output | None = None
    slo: Slo = Field(default_factory=Slo)
    circuit_breaker: CircuitBreaker = Field(default_factory=CircuitBreaker)
    fallback: Fallback = Field(default_factory=Fallback)
    rate_limit: RateLimit | None = None
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    warmup: Warmup = Field(default_factory=Warmup)
    runtime: RuntimeOverrides = Field(default_factory=RuntimeOverrides)
    rollout: Rollout = Field(default_factory=Rollout)
    rules: list[Rule] = Field(
        default_factory=list,
        max_length=MAX_RULES,
        description="conditions evaluated before the model (docs/decisions.md)",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    ensemble: Ensemble | None = None
    decision: Decision | None = None
    audit: Audit | None = None
    stream: StreamConsumer | None = None

    @field_validator("rules")
    @classmethod
    def _rules_compile(cls, rules: list[Rule]) -> list[Rule]:
        """Every expression compiles (CEL, type-checked), refused naming its field."""
        seen: set[str] = set()
        for i, rule in enumerate(rules):
            if rule.name in seen:
                raise PydanticCustomError(
                    "rule_name",
                    "spec.rules[{i}].name {name} is used twice",
                    {"i": i, "name": rule.name},
                )
            seen.add(rule.name)
            try:
                compile_expression(rule.expression)
            except ExpressionError as e:
                raise PydanticCustomError(
                    "cel_expression", "spec.rules[{i}].expression {why}", {"i": i, "why": str(e)}
                ) from None
        return rules

    @property
    def decides(self) -> bool:
        """Whether /predict answers with a decision (rules, an ensemble or thresholds)."""
        return bool(self.rules) or self.ensemble is not None or self.decision is not None

    @property
    def output_choice(self) -> tuple[str | None, int | None]:
        """spec.output as (name, column); (None, None) when not set."""
        return (self.output.name, self.output.column) if self.output else (None, None)

    @property
    def feature_columns(self) -> list[str] | None:
        """spec.features.columns, if set."""
        return self.features.columns if self.features is not None else None

    @property
    def slow_call_ms(self) -> int:
        return self.circuit_breaker.slow_call_ms or self.slo.p99_latency_ms

    @property
    def open_duration_seconds(self) -> float:
        return parse_duration(self.circuit_breaker.open_duration)

    def unverified_artifacts(self) -> list[tuple[str, str]]:
        """(field, uri) of the artifacts the runtime loads without a digest (allowUnverified)."""
        named: list[tuple[str, ArtifactRef]] = [("spec.artifact", self.artifact)]
        if self.fallback.mode == "model" and self.fallback.artifact is not None:
            named.append(("spec.fallback.artifact", self.fallback.artifact))
        for i, member in enumerate(self.ensemble.models if self.ensemble else []):
            named.append((f"spec.ensemble.models[{i}].artifact", member.artifact))
        return [(field, art.uri) for field, art in named if art.unverified]


class ModelStatus(ApiModel):
    observed_generation: int | None = None
    phase: Literal["Pending", "Progressing", "Ready", "Degraded", "Failed"] | None = None
    url: str | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    active_version: str | None = None
    # The artifact serving the champion's traffic (with spec.rollout.strategy canary it lags
    # spec.artifact until the owned Experiment promotes the new one).
    active_artifact: ArtifactRecord | None = None
    experiment: str | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class Metadata(ApiModel):
    """The part of ObjectMeta rtml reads; everything else passes through untouched."""

    model_config = ConfigDict(extra="allow", alias_generator=None)

    name: str = ""
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class Model(ApiModel):
    """A Model resource as users write it."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-rtml-kind": {
                "kind": "Model",
                "plural": "models",
                "singular": "model",
                "shortNames": ["rmodel"],
                "categories": ["rtml"],
            }
        }
    )

    api_version: Literal["rtml.dev/v1alpha1"] = "rtml.dev/v1alpha1"
    kind: Literal["Model"] = "Model"
    metadata: Metadata = Field(default_factory=Metadata)
    spec: ModelSpec
    status: ModelStatus | None = None

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Model:
        return cls.model_validate(manifest)

    def serving(self, version: str, artifact: ArtifactRef | ArtifactRecord) -> Model:
        """This Model with another version and artifact (its format and the rest of its spec
        kept): what a canary's champion or candidate pods are rendered from. A champion
        recorded without a digest (status.activeArtifact) served unverified when it was
        accepted, and goes on doing so, with the opt-out said, not implied."""
        update = {
            "uri": artifact.uri,
            "sha256": artifact.sha256,
            "allow_unverified": True if artifact.sha256 is None else None,
        }
        art = self.spec.artifact.model_copy(update=update)
        spec = self.spec.model_copy(update={"version": version, "artifact": art})
        return self.model_copy(update={"spec": spec})
