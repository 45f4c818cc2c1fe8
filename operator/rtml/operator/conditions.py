"""metav1.Condition semantics: one per type, lastTransitionTime moves only when status flips."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Cond:
    type: str
    status: Status
    reason: str
    message: str


def _timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    previous: list[dict[str, Any]], new: list[Cond], generation: int | None, now: datetime
) -> list[dict[str, Any]]:
    """The new conditions in wire form, keeping each old lastTransitionTime whose status held."""
    old = {c.get("type"): c for c in previous or []}
    out = []
    for c in new:
        before = old.get(c.type)
        changed = before is None or before.get("status") != c.status
        out.append(
            {
                "type": c.type,
                "status": c.status,
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": _timestamp(now) if changed else before["lastTransitionTime"],  # type: ignore[index]
                "observedGeneration": generation,
            }
        )
    return out


def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)
