"""The traffic plan: what share of a Model's requests its candidate scores, right now.

The operator writes it (the Experiment's current step) into a ConfigMap each runtime pod
mounts as a volume; the runtime re-reads the file when the kubelet refreshes it and applies
the new weight without a restart (docs/experiments.md). On one machine `rtml serve --traffic
FILE` reads the same file. Below both planes: neither imports the other to agree on it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, model_validator

from rtml.api.common import ApiModel
from rtml.api.experiment import Candidate


class TrafficPlan(ApiModel):
    """No experiment (`experiment` unset): every request is the champion's."""

    experiment: str | None = Field(default=None, description="the Experiment this plan serves")
    strategy: Literal["canary", "abtest", "shadow"] | None = None
    candidate: Candidate | None = None
    # Percent of requests answered by the candidate (canary, abtest); 0 for shadow.
    weight: int = Field(default=0, ge=0, le=100)
    # Percent of requests also scored by the candidate off the response path (shadow).
    shadow_sample_rate: int = Field(default=0, ge=0, le=100)
    # The request field whose value picks the variant; None: the Model's entity key.
    sticky_key: str | None = None
    # Changes with every plan (plan_revision); each pod reports the revision it applies.
    revision: str = ""

    @model_validator(mode="after")
    def _candidate_when_running(self) -> TrafficPlan:
        if self.experiment is not None and (self.candidate is None or self.strategy is None):
            raise ValueError("a plan with an experiment needs its strategy and candidate")
        return self

    @property
    def active(self) -> bool:
        return self.experiment is not None and self.candidate is not None


CHAMPION_ONLY = TrafficPlan()


def plan_revision(plan: TrafficPlan) -> str:
    """A short digest of everything in the plan but its revision."""
    body = plan.model_dump(mode="json", by_alias=True, exclude={"revision"}, exclude_none=True)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


def with_revision(plan: TrafficPlan) -> TrafficPlan:
    return plan.model_copy(update={"revision": plan_revision(plan)})


def plan_json(plan: TrafficPlan) -> str:
    """The file's text: stable JSON, revision included."""
    return json.dumps(
        with_revision(plan).model_dump(mode="json", by_alias=True, exclude_none=True),
        sort_keys=True,
        indent=1,
    )
