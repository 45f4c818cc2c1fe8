"""One fraud-style assessment: rules first, then the models, then a decision (docs/decisions.md).

The Runtime calls `Assessor` only for a Model that declares spec.rules, spec.ensemble or
spec.decision; the feature read, its breaker and spec.fallback for the feature store stay the
Runtime's. A model failure here is not answered by spec.fallback: too few models scoring is
the declared conservative decision (one model of one failing is "more than half").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rtml.api.model import PRIMARY, ModelSpec
from rtml_runtime import decision
from rtml_runtime.breaker import CircuitBreaker
from rtml_runtime.decision import Verdict
from rtml_runtime.ensemble import (
    CALL_OUTCOMES,
    EnsembleScorer,
    Member,
    enough_scored,
    scored_call,
    weighted_score,
)
from rtml_runtime.fused import FusedModels
from rtml_runtime.metrics import RuntimeMetrics
from rtml_runtime.onnx_model import OnnxModel
from rtml_runtime.rules import RuleOutcome, RuleSet


@dataclass(frozen=True, slots=True)
class Assessment:
    verdict: Verdict
    score: float | None  # the combined score; None when no model scored or none was called
    model_scores: Mapping[str, float | None]
    rule_hits: tuple[str, ...]
    degraded: bool

    def fields(self) -> dict[str, Any]:
        """What /predict adds to its answer."""
        return {
            "decision": self.verdict.action,
            "riskLevel": self.verdict.risk_level,
            "reasons": list(self.verdict.reasons),
            "modelScores": dict(self.model_scores),
            "ruleHits": list(self.rule_hits),
        }


class Assessor:
    def __init__(
        self,
        model_name: str,
        spec: ModelSpec,
        members: Sequence[Member],
        metrics: RuntimeMetrics,
        fused: FusedModels | None = None,
    ) -> None:
        self.rules = RuleSet(spec.rules)
        self.policy = spec.decision or decision.DEFAULT
        ens = spec.ensemble
        self.required = ens.required if ens is not None else 1
        self.weights = {PRIMARY: ens.weight if ens is not None else 1.0}
        self.weights.update({m.name: m.weight for m in members})
        timeout_ms = (ens.timeout_ms if ens else None) or spec.slo.p99_latency_ms
        self.ensemble = EnsembleScorer(members, timeout_ms / 1000, fused) if members else None
        self.primary_calls = {
            o: metrics.model_calls.labels(model_name, PRIMARY, o) for o in CALL_OUTCOMES
        }
        self.hit_counters = {
            r.name: metrics.rule_hits.labels(model_name, r.name, r.severity)
            for r in self.rules.rules
        }
        self.error_counters = {
            r.name: metrics.rule_errors.labels(model_name, r.name) for r in self.rules.rules
        }
        self.decisions = {a: metrics.decisions.labels(model_name, a) for a in decision.ACTIONS}

    def check_rules(self, request: Mapping[str, Any], values: Mapping[str, Any]) -> RuleOutcome:
        outcome = self.rules.evaluate(request, values)
        for hit in outcome.hits:
            self.hit_counters[hit.name].inc()
        for name in outcome.failed:
            self.error_counters[name].inc()
        return outcome

    def _done(self, a: Assessment) -> Assessment:
        self.decisions[a.verdict.action].inc()
        return a

    def blocked(self, outcome: RuleOutcome, degraded: bool) -> Assessment:
        """A high-severity hit: block, no model called."""
        names = tuple(h.name for h in outcome.hits)
        return self._done(Assessment(decision.blocked(outcome.hits), None, {}, names, degraded))

    def on_score(
        self, outcome: RuleOutcome, score: float, scores: Mapping[str, float | None], degraded: bool
    ) -> Assessment:
        """The thresholds' decision on `score` (spec.fallback's, when the store failed)."""
        names = tuple(h.name for h in outcome.hits)
        verdict = decision.by_score(self.policy, score, outcome.hits)
        return self._done(Assessment(verdict, score, scores, names, degraded))

    def assess(
        self,
        outcome: RuleOutcome,
        values: Mapping[str, Any],
        model: OnnxModel,
        row: list[float],
        breaker: CircuitBreaker,
        degraded: bool,
    ) -> Assessment:
        """Score every model (the primary, `model` on `row`, behind `breaker`), then decide."""

        def first() -> float | None:
            return scored_call(breaker, lambda: model.predict_one(row), self.primary_calls, PRIMARY)

        if self.ensemble is None:
            scores: dict[str, float | None] = {PRIMARY: first()}
        else:
            together = self.ensemble.fused_score(model, row, breaker, self.primary_calls)
            main, members = together or self.ensemble.score(values, first)
            scores = {PRIMARY: main, **members}
        names = tuple(h.name for h in outcome.hits)
        failing = any(s is None for s in scores.values())
        combined = weighted_score(scores, self.weights)
        if combined is None or not enough_scored(scores, self.required):
            verdict = decision.conservative(self.policy, outcome.hits)
            return self._done(Assessment(verdict, None, scores, names, True))
        verdict = decision.by_score(self.policy, combined, outcome.hits)
        return self._done(Assessment(verdict, combined, scores, names, degraded or failing))

    def close(self) -> None:
        if self.ensemble is not None:
            self.ensemble.close()
