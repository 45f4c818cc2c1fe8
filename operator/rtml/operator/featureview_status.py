"""compute_feature_view_status: what the registry says about a FeatureView, as its status.

Pure: the reconciler gathers the facts (did Feast take the view, what does the registry hold,
did applying the CronJob work) and this module turns them into conditions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rtml.operator.conditions import Cond, merge_conditions


@dataclass(frozen=True)
class RegistryFacts:
    """What one visit learnt; `refused` is Feast's (or the spec's) objection in words."""

    feast_name: str | None = None
    feature_names: list[str] = field(default_factory=list)
    last_materialization: datetime | None = None
    refused: Cond | None = None  # Registered=False: the user must change the spec
    unreachable: str | None = None  # the registry could not be reached this time
    problem: Cond | None = None  # a child (the CronJob) the API server refused


def rfc3339(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _kept(previous: dict[str, Any], type_: str) -> Cond | None:
    old = next((c for c in previous.get("conditions") or [] if c.get("type") == type_), None)
    if old is None:
        return None
    return Cond(type_, old["status"], old["reason"], old.get("message", ""))


def _registered(facts: RegistryFacts, previous: dict[str, Any]) -> Cond:
    if facts.refused is not None:
        return facts.refused
    if facts.unreachable is not None:
        # A blip must not flip a Ready view (and the Models reading it): keep the last verdict.
        return _kept(previous, "Registered") or Cond(
            "Registered", "Unknown", "RegistryUnavailable", facts.unreachable
        )
    count = len(facts.feature_names)
    return Cond(
        "Registered",
        "True",
        "Applied",
        f"registered in Feast as {facts.feast_name!r} with {count} feature(s)",
    )


def _materialized(facts: RegistryFacts) -> Cond:
    if facts.last_materialization is None:
        return Cond("Materialized", "Unknown", "NotYetRun", "no materialization has run yet")
    return Cond(
        "Materialized",
        "True",
        "Materialized",
        f"the last run loaded rows up to {rfc3339(facts.last_materialization)}",
    )


def compute_feature_view_status(
    generation: int | None,
    facts: RegistryFacts,
    previous: dict[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """The whole status subresource of a FeatureView."""
    previous = previous or {}
    if facts.unreachable is not None:
        # Nothing of this generation reached Feast: it has not been observed yet.
        generation = previous.get("observedGeneration")
    registered = _registered(facts, previous)
    blocker = facts.refused or facts.problem
    if blocker is not None:
        ready = Cond("Ready", "False", blocker.reason, blocker.message)
    else:
        ready = Cond("Ready", registered.status, registered.reason, registered.message)
    if facts.unreachable is not None:
        reconciling = Cond("Reconciling", "True", "RegistryUnavailable", facts.unreachable)
    else:
        reconciling = Cond("Reconciling", "False", "Settled", "no work under way")
    stalled = (
        Cond("Stalled", "True", blocker.reason, blocker.message)
        if blocker is not None
        else Cond("Stalled", "False", "NotStalled", "nothing blocks progress")
    )
    materialized = (facts.unreachable and _kept(previous, "Materialized")) or _materialized(facts)
    conds = [registered, materialized, ready, reconciling, stalled]
    names = facts.feature_names or (previous.get("featureNames", []) if facts.unreachable else [])
    last = (
        rfc3339(facts.last_materialization)
        if facts.last_materialization
        else previous.get("lastMaterialization")
    )
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "featureNames": names,
        "lastMaterialization": last,
        "conditions": merge_conditions(previous.get("conditions", []), conds, generation, now),
    }
    return {k: v for k, v in status.items() if v is not None}
