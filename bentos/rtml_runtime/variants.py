"""What the request path reads: the variants in effect and who answers a given request.

`ActivePlan` is immutable and replaced whole (plans.py swaps it when a new traffic plan is
loaded), so a request reads one attribute once and sees one consistent plan: no lock, and no
request ever sees a weight without its candidate loaded.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from rtml.api.model import ModelSpec
from rtml.api.traffic import TrafficPlan
from rtml_runtime.breaker import CircuitBreaker, State
from rtml_runtime.clock import Clock
from rtml_runtime.metrics import RuntimeMetrics, VariantMetrics
from rtml_runtime.onnx_model import OnnxModel
from rtml_runtime.split import Splitter

log = logging.getLogger("rtml.runtime")
CHAMPION = "champion"
CANDIDATE = "candidate"
SHADOW = "shadow"


@dataclass(frozen=True, slots=True, eq=False)
class Variant:
    """One loaded model with its own breaker and metric children (resolved once)."""

    role: str  # champion | candidate | shadow
    version: str
    model: OnnxModel
    columns: list[str]  # model.feature_names, resolved once
    breaker: CircuitBreaker
    metrics: VariantMetrics
    dropped: Counter | None = None  # shadow only: scorings the full queue refused
    # rtml_circuit_breaker_state of this variant's model breaker (the shadow worker process
    # runs its own breaker and reports the state, which the serving process exports here).
    breaker_gauge: Gauge | None = None


@dataclass(frozen=True, slots=True, eq=False)
class ActivePlan:
    plan: TrafficPlan
    champion: Variant
    candidate: Variant | None = None  # answers its share (canary, abtest)
    shadow: Variant | None = None  # also scores its share, off the response path (shadow)
    splitter: Splitter | None = None
    sticky_field: str = "entity_id"
    # The request field the entity id may also come as (Runtime.entity_id reads it too).
    sticky_alias: str | None = None

    @property
    def weight(self) -> int:
        """What this pod applies: the candidate's share, or the shadow's sample rate."""
        if self.candidate is not None:
            return self.plan.weight
        if self.shadow is not None:
            return self.plan.shadow_sample_rate
        return 0

    def _sticky(self, payload: Mapping[str, Any]) -> Any:
        value = payload.get(self.sticky_field)
        if value is None and self.sticky_alias is not None:
            value = payload.get(self.sticky_alias)
        return value

    def answering(self, payload: Mapping[str, Any]) -> Variant:
        """Who answers this request (the champion when no candidate is in effect)."""
        candidate = self.candidate
        if candidate is None or self.splitter is None:
            return self.champion
        return candidate if self.splitter.takes(self._sticky(payload)) else self.champion

    def answering_drawn(self) -> Variant:
        """Who answers a request that carries no sticky value (Open Inference v2)."""
        candidate = self.candidate
        if candidate is None or self.splitter is None:
            return self.champion
        return candidate if self.splitter.draw() else self.champion

    def shadowing(self, payload: Mapping[str, Any]) -> Variant | None:
        """The shadow variant when this request is in the sampled share, else None."""
        shadow = self.shadow
        if shadow is None or self.splitter is None:
            return None
        return shadow if self.splitter.takes(self._sticky(payload)) else None


def feature_row(values: Mapping[str, Any], columns: Sequence[str]) -> list[Any]:
    """One row in a model's column order, NaN where a value is missing; a plain list, which the
    model copies straight into its bound input buffers."""
    get = values.get
    return [math.nan if (v := get(n)) is None else v for n in columns]


def build_variant(
    role: str,
    version: str,
    model: OnnxModel,
    model_name: str,
    spec: ModelSpec,
    metrics: RuntimeMetrics,
    clock: Clock,
) -> Variant:
    """A candidate or shadow variant: its own model breaker from spec.circuitBreaker, its own
    metric children (and breaker gauge)."""
    gauge = metrics.breaker_state.labels(model_name, version, role, "model")

    def changed(dependency: str, old: State, new: State) -> None:
        log.warning(
            "circuit breaker changed state",
            extra={"dependency": dependency, "variant": role, "from": old.name, "to": new.name},
        )
        gauge.set(new.gauge)

    breaker = CircuitBreaker.from_spec(
        "model", spec.circuit_breaker, spec.slow_call_ms, clock=clock, on_state_change=changed
    )
    gauge.set(0)
    dropped = metrics.shadow_dropped.labels(model_name, version, role) if role == SHADOW else None
    return Variant(
        role,
        version,
        model,
        model.feature_names,
        breaker,
        metrics.variant(model_name, version, role),
        dropped,
        gauge,
    )
