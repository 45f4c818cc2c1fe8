"""The Experiment kind: a candidate artifact tried against a Model's current one."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from rtml.api.common import (
    ApiModel,
    ArtifactRef,
    Condition,
    Duration,
    FeatureName,
    ResourceName,
    cel,
)
from rtml.api.model import (
    DEFAULT_STEPS,
    STEPS_ASCENDING,
    Analysis,
    Metadata,
    Step,
    check_steps,
)

# What the operator on call sets (`rtml experiment pause|resume|abort`, or kubectl annotate):
# "true" pauses at the current weight until removed; "true" on abort sends all traffic back
# to the champion and ends the experiment as Aborted.
PAUSE_ANNOTATION = "rtml.dev/pause"
ABORT_ANNOTATION = "rtml.dev/abort"


class Candidate(ApiModel):
    version: str = Field(min_length=1, max_length=63, description="label of the challenger")
    artifact: ArtifactRef


class Canary(ApiModel):
    steps: list[Step] = Field(
        default=list(DEFAULT_STEPS),
        min_length=1,
        max_length=20,
        json_schema_extra={
            "x-kubernetes-list-type": "set",
            "x-kubernetes-validations": [STEPS_ASCENDING],
        },
    )
    step_interval: Duration = Field(default="1m", description="time at each step")

    @model_validator(mode="after")
    def _ascending(self) -> Canary:
        check_steps(self.steps)
        return self


class AbTest(ApiModel):
    candidate_weight: int = Field(ge=1, le=99, description="percent of traffic to the candidate")
    duration: Duration = Field(default="1h", description="how long the split runs")


class Shadow(ApiModel):
    sample_rate: int = Field(default=100, ge=1, le=100, description="percent also scored")


class ExperimentSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.strategy != 'abtest' || has(self.abtest)",
                    "abtest is required when strategy is abtest",
                    ".abtest",
                ),
                cel(
                    "self.strategy != 'shadow' || has(self.shadow)",
                    "shadow is required when strategy is shadow",
                    ".shadow",
                ),
            ]
        }
    )

    model_ref: ResourceName = Field(description="the Model under test")
    candidate: Candidate
    strategy: Literal["canary", "abtest", "shadow"]
    canary: Canary = Field(default_factory=Canary)
    abtest: AbTest | None = None
    shadow: Shadow | None = None
    sticky_key: FeatureName | None = Field(default=None)
    analysis: Analysis = Field(default_factory=Analysis)
    on_success: Literal["promote", "keep"] = "keep"

    @model_validator(mode="after")
    def _strategy_configured(self) -> ExperimentSpec:
        if self.strategy == "abtest" and self.abtest is None:
            raise ValueError("abtest is required when strategy is abtest")
        if self.strategy == "shadow" and self.shadow is None:
            raise ValueError("shadow is required when strategy is shadow")
        return self


class AnalysisResult(ApiModel):
    time: datetime
    metric: str
    value: float | None = None
    max: float
    passed: bool


Phase = Literal[
    "Pending", "Progressing", "Paused", "Promoted", "RolledBack", "Completed", "Aborted"
]
FINAL_PHASES: tuple[str, ...] = ("Promoted", "RolledBack", "Completed", "Aborted")


class ExperimentStatus(ApiModel):
    """All progress lives here, never in operator memory: a restarted operator resumes at the
    same step with the same weight."""

    observed_generation: int | None = None
    phase: Phase | None = None
    current_step: int | None = Field(default=None, description="index into the steps, from 0")
    candidate_weight: int | None = None
    analysis: list[AnalysisResult] = Field(default_factory=list, max_length=20)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    step_started_at: datetime | None = Field(
        default=None, description="when the current weight was written"
    )
    window_start: datetime | None = Field(
        default=None,
        description="when every ready pod reported the current weight: the analysis window",
    )
    failed_analyses: int = Field(default=0, ge=0, description="failed analyses so far")
    traffic_revision: str | None = Field(
        default=None, description="the traffic plan revision pods must report"
    )
    paused_reason: str | None = Field(default=None, description="why the experiment is paused")
    last_verdict: str | None = Field(default=None, description="the last decision, in short")
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class Experiment(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-rtml-kind": {
                "kind": "Experiment",
                "plural": "experiments",
                "singular": "experiment",
                "shortNames": ["rexp"],
                "categories": ["rtml"],
            }
        }
    )

    api_version: Literal["rtml.dev/v1alpha1"] = "rtml.dev/v1alpha1"
    kind: Literal["Experiment"] = "Experiment"
    metadata: Metadata = Field(default_factory=Metadata)
    spec: ExperimentSpec
    status: ExperimentStatus | None = None
