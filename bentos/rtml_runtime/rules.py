"""spec.rules: CEL conditions compiled once at load and evaluated before any model.

Every rule is evaluated (a dozen microseconds for a handful, docs/decisions.md), so the
answer and the audit record list every hit, not only the first; the caller decides what a
high-severity hit means (decision.py: block, no model called).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rtml.api.expressions import activation, compile_expression, evaluate, only, referenced_keys
from rtml.api.model import Rule


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    severity: str  # low | medium | high
    reason: str
    program: Any  # the compiled CEL expression


@dataclass(frozen=True, slots=True)
class RuleHit:
    name: str
    severity: str
    reason: str


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    hits: tuple[RuleHit, ...]
    failed: tuple[str, ...]  # rules whose evaluation failed (not a hit)

    @property
    def blocking(self) -> bool:
        """Whether a high-severity rule hit: the request is blocked without a model."""
        return any(h.severity == "high" for h in self.hits)


NO_RULES = RuleOutcome((), ())


class RuleSet:
    """The Model's rules, compiled (the API models compiled each once already: the cache
    hands back the same program)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(
            CompiledRule(r.name, r.severity, r.reason or r.name, compile_expression(r.expression))
            for r in rules
        )

        # Only the keys the rules name go into each evaluation's variables: converting every
        # feature into a CEL value was most of a request's rule cost (31 values, 5 named in
        # the fraud example: docs/decisions.md, "Cost").
        keys = referenced_keys(r.expression for r in rules)
        self.request_keys, self.feature_keys = keys["request"], keys["features"]

    def __bool__(self) -> bool:
        return bool(self.rules)

    def evaluate(self, request: Mapping[str, Any], features: Mapping[str, Any]) -> RuleOutcome:
        if not self.rules:
            return NO_RULES
        variables = activation(only(request, self.request_keys), only(features, self.feature_keys))
        hits: list[RuleHit] = []
        failed: list[str] = []
        for rule in self.rules:
            result = evaluate(rule.program, variables)
            if result is None:
                failed.append(rule.name)
            elif result:
                hits.append(RuleHit(rule.name, rule.severity, rule.reason))
        return RuleOutcome(tuple(hits), tuple(failed))
