"""spec.decision: a score and the rules' hits to an action, a risk level and reasons. Pure.

Order of precedence, each step only ever raising the action (approve < review < block):
a high-severity rule hit blocks (no model was called); too few models scoring gives the
declared conservative decision; otherwise the last threshold the score reaches decides, and
a medium-severity hit raises the result to at least `review`. Low-severity hits add reasons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rtml.api.model import Decision
from rtml_runtime.rules import RuleHit

ACTIONS = ("approve", "review", "block")
RISK_LEVELS = ("low", "medium", "high")
DEFAULT = Decision()  # what a Model with rules or an ensemble but no spec.decision uses


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str  # approve | review | block
    risk_level: str  # low | medium | high
    reasons: tuple[str, ...]


def _at_least(a: str, b: str, order: Sequence[str]) -> str:
    return a if order.index(a) >= order.index(b) else b


def rule_reasons(hits: Sequence[RuleHit]) -> tuple[str, ...]:
    return tuple(h.reason for h in hits)


def blocked(hits: Sequence[RuleHit]) -> Verdict:
    """A high-severity rule hit: block, high risk, the rules' reasons."""
    return Verdict("block", "high", rule_reasons(hits))


def conservative(decision: Decision, hits: Sequence[RuleHit]) -> Verdict:
    c = decision.conservative
    return _with_hits(Verdict(c.action, c.risk_level, (c.reason,)), hits)


def by_score(decision: Decision, score: float, hits: Sequence[RuleHit]) -> Verdict:
    """The last threshold `score` reaches, then raised by the rules' hits."""
    verdict = Verdict("approve", "low", ())
    for t in decision.thresholds:
        if score >= t.min_score:
            verdict = Verdict(t.action, t.risk_level, (t.reason,) if t.reason else ())
    return _with_hits(verdict, hits)


def _with_hits(verdict: Verdict, hits: Sequence[RuleHit]) -> Verdict:
    action, risk = verdict.action, verdict.risk_level
    if any(h.severity == "medium" for h in hits):
        action = _at_least(action, "review", ACTIONS)
        risk = _at_least(risk, "medium", RISK_LEVELS)
    return Verdict(action, risk, (*rule_reasons(hits), *verdict.reasons))


def at_or_above(action: str, level: str) -> bool:
    """Whether `action` is `level` or stronger (audit's alertAt)."""
    return ACTIONS.index(action) >= ACTIONS.index(level)
