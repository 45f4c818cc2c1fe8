"""What serves a Model's traffic, and which Experiment holds it. Pure.

- `spec.rollout.strategy: canary`: a change of `spec.artifact` keeps the active artifact
  serving (the champion) and asks for an Experiment the Model owns, `MODEL-VERSION`, whose
  candidate is the new artifact. The Model's spec is never written: when the Experiment is
  Promoted the active artifact becomes the spec's; after a rollback it stays the champion's
  until the spec changes again.
- One Experiment per Model holds its traffic: the oldest one not yet finished. Others wait in
  Pending with a condition that names the holder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from rtml import API_VERSION
from rtml.api.common import ArtifactRecord, ArtifactRef
from rtml.api.experiment import FINAL_PHASES, ExperimentSpec, ExperimentStatus
from rtml.api.model import Model
from rtml.api.traffic import CHAMPION_ONLY, TrafficPlan
from rtml.operator.canary import traffic_plan
from rtml.operator.render.meta import MANAGED_BY, MODEL_LABEL, owner_reference
from rtml.operator.status import Canary

CANARY_LABEL = "rtml.dev/canary-of"


def owned_experiment_name(model: Model) -> str:
    """`MODEL-VERSION` (API.md), made a valid object name: lower case, [a-z0-9-.] only."""
    version = re.sub(r"[^a-z0-9.-]+", "-", model.spec.version.lower()).strip("-.") or "v"
    return f"{model.metadata.name}-{version}"[:253].rstrip("-.")


def _phase(exp: dict[str, Any]) -> str | None:
    return (exp.get("status") or {}).get("phase")


def running(exp: dict[str, Any]) -> bool:
    return _phase(exp) not in FINAL_PHASES and not exp["metadata"].get("deletionTimestamp")


def experiments_of(model_name: str, experiments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in experiments if (e.get("spec") or {}).get("modelRef") == model_name]


def holder(experiments: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The Experiment that holds the Model's traffic: the oldest one still running."""
    alive = [e for e in experiments if running(e)]
    alive.sort(key=lambda e: (e["metadata"].get("creationTimestamp") or "", e["metadata"]["name"]))
    return alive[0] if alive else None


def plan_of(exp: dict[str, Any] | None) -> TrafficPlan:
    """The traffic plan pods must apply for the holding Experiment (champion only if none)."""
    if exp is None:
        return CHAMPION_ONLY
    try:
        spec = ExperimentSpec.model_validate(exp.get("spec") or {})
        status = ExperimentStatus.model_validate(exp.get("status") or {})
    except ValueError:
        return CHAMPION_ONLY  # an Experiment rtml cannot read routes nothing
    return traffic_plan(exp["metadata"]["name"], spec, status)


@dataclass(frozen=True)
class Serving:
    """What the Model's pods serve as champion, and the owned Experiment a canary needs."""

    model: Model  # the Model as rendered: its spec's artifact, or the active one during a canary
    experiment: dict[str, Any] | None = None  # the owned Experiment to apply (canary)
    superseded: tuple[str, ...] = ()  # owned Experiments for older artifacts, to delete
    canary: Canary | None = None  # the spec does not serve yet: its canary, and how it ended


def _same(a: ArtifactRecord | None, b: ArtifactRef) -> bool:
    return a is not None and (a.uri, a.sha256) == (b.uri, b.sha256)


def serving(model: Model, previous: dict[str, Any], experiments: list[dict[str, Any]]) -> Serving:
    """`previous` is the Model's status; `experiments` those that name this Model."""
    spec = model.spec
    if spec.rollout.strategy != "canary":
        return Serving(model)
    active_raw = previous.get("activeArtifact")
    active = ArtifactRecord.model_validate(active_raw) if active_raw else None
    active_version = previous.get("activeVersion")
    if active is None or active_version is None:
        return Serving(model)  # the first rollout has no champion to protect
    owned = [e for e in experiments if _owned_by(e, model)]
    name = owned_experiment_name(model)
    # Canaries of other artifacts still running: a newer spec ends them. Ended ones stay, as
    # the record of what was tried.
    superseded = tuple(
        e["metadata"]["name"] for e in owned if e["metadata"]["name"] != name and running(e)
    )
    if _same(active, spec.artifact) and active_version == spec.version:
        return Serving(model, superseded=superseded)
    current = next((e for e in owned if e["metadata"]["name"] == name), None)
    desired: dict[str, Any] | None = render_owned_experiment(model)
    if current is not None and _phase(current) == "Promoted" and _candidate_is(current, model):
        return Serving(model, superseded=superseded)
    canary = Canary(name, spec.version)
    if current is not None and _phase(current) in FINAL_PHASES:
        if _candidate_is(current, model):
            # Rolled back or aborted: the champion serves until the spec changes again.
            verdict = (current.get("status") or {}).get("lastVerdict")
            canary = Canary(name, spec.version, _phase(current), verdict)
        else:
            # The same version name with another artifact after the last one ended: a new
            # canary.
            superseded = (*superseded, name)
            desired = None
    return Serving(model.serving(active_version, active), desired, superseded, canary)


def _owned_by(exp: dict[str, Any], model: Model) -> bool:
    refs = exp["metadata"].get("ownerReferences") or []
    return any(r.get("uid") == model.metadata.uid and r.get("kind") == "Model" for r in refs)


def _candidate_is(exp: dict[str, Any], model: Model) -> bool:
    art = ((exp.get("spec") or {}).get("candidate") or {}).get("artifact") or {}
    return (art.get("uri"), art.get("sha256")) == (
        model.spec.artifact.uri,
        model.spec.artifact.sha256,
    )


def render_owned_experiment(model: Model) -> dict[str, Any]:
    """The canary Experiment a Model owns for its new artifact (applied server-side)."""
    r = model.spec.rollout
    # The candidate's artifact as the spec names it: its digest, or its opt-out from one.
    artifact: dict[str, Any] = {"uri": model.spec.artifact.uri}
    if model.spec.artifact.sha256:
        artifact["sha256"] = model.spec.artifact.sha256
    elif model.spec.artifact.allow_unverified:
        artifact["allowUnverified"] = True
    candidate = {"version": model.spec.version, "artifact": artifact}
    return {
        "apiVersion": API_VERSION,
        "kind": "Experiment",
        "metadata": {
            "name": owned_experiment_name(model),
            "namespace": model.metadata.namespace,
            "labels": {**MANAGED_BY, MODEL_LABEL: model.metadata.name, CANARY_LABEL: "true"},
            "ownerReferences": [owner_reference(model)],
        },
        "spec": {
            "modelRef": model.metadata.name,
            "candidate": candidate,
            "strategy": "canary",
            "canary": {"steps": list(r.steps), "stepInterval": r.step_interval},
            "analysis": r.analysis.model_dump(mode="json", by_alias=True, exclude_none=True),
            "onSuccess": "promote",
        },
    }


def owned_by_a_model(exp: dict[str, Any]) -> bool:
    """Experiments a Model's canary rollout made: promotion is the Model's own business."""
    refs = exp["metadata"].get("ownerReferences") or []
    return any(r.get("kind") == "Model" and r.get("controller") for r in refs)
