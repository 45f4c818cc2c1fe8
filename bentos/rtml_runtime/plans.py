"""Putting a traffic plan into effect: load its candidate off the event loop, then swap.

The champion keeps serving while a candidate is fetched, digest-checked, loaded, checked
against the Model's features and warmed up in a worker thread; only then is one new immutable
`ActivePlan` assigned, which requests read once each. A plan that keeps the candidate (same
uri and sha256) reuses the loaded model and its variant (its breaker state too): a weight
change costs no reload. A plan without an experiment drops the candidate.

A candidate that cannot be loaded leaves the pod serving the champion only: the error is
logged with the plan's revision, `rtml_candidate_weight` says 0 for that revision and
`rtml_candidate_load_error{reason}` is 1, so the operator sees the plan was not applied and
why. The load is retried every `retry_s` while the plan stays the same (a download may have
failed for a moment).

`rtml_candidate_weight{model, experiment, revision}` is set only after the swap, and its
previous label set removed: a pod exports exactly the plan it applies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from rtml.api.experiment import Candidate
from rtml.api.traffic import CHAMPION_ONLY, TrafficPlan
from rtml.artifacts import ArtifactError
from rtml_runtime.metrics import RuntimeMetrics
from rtml_runtime.onnx_model import OnnxModel
from rtml_runtime.split import Splitter
from rtml_runtime.trafficfile import TrafficFile
from rtml_runtime.variants import CANDIDATE, SHADOW, ActivePlan, Variant

log = logging.getLogger("rtml.runtime.traffic")
LoadModel = Callable[[Candidate], OnnxModel]
MakeVariant = Callable[[str, str, OnnxModel], Variant]


def failure_reason(error: Exception) -> str:
    """A short, CamelCase reason for `rtml_candidate_load_error` (the message is in the log)."""
    return "ArtifactUnavailable" if isinstance(error, ArtifactError) else "ModelInvalid"


class PlanSwitch:
    """Owns the active plan of one Runtime and everything it takes to change it."""

    def __init__(
        self,
        model_name: str,
        champion: Variant,
        *,
        load_model: LoadModel,
        make_variant: MakeVariant,
        metrics: RuntimeMetrics,
        sticky_field: str,
        sticky_alias: str | None = None,
        on_shadow: Callable[[Variant | None], None] | None = None,
        retry_s: float = 30.0,
    ) -> None:
        self.model_name = model_name
        self.champion = champion
        self.load_model = load_model
        self.make_variant = make_variant
        self.metrics = metrics
        self.sticky_field = sticky_field
        self.sticky_alias = sticky_alias
        self.on_shadow = on_shadow
        self.retry_s = retry_s
        self.active = ActivePlan(CHAMPION_ONLY, champion)
        # The loaded candidate: its identity (uri, sha256) and its variants by role.
        self._identity: tuple[str, str | None] | None = None
        self._model: OnnxModel | None = None
        self._variants: dict[str, Variant] = {}
        self._weight_labels: tuple[str, str, str] | None = None
        self._error_labels: tuple[str, str, str, str, str] | None = None
        self.failed: TrafficPlan | None = None  # the plan whose candidate did not load
        self._failed_at = 0.0
        self._export(self.active, None)

    async def apply(self, plan: TrafficPlan) -> bool:
        """Put `plan` into effect; False when its candidate could not be loaded (the champion
        alone then serves). Never raises for a bad candidate."""
        if not plan.active:
            self._drop_candidate()
            self._swap(ActivePlan(plan, self.champion))
            self.failed = None
            return True
        candidate = plan.candidate
        assert candidate is not None
        assert plan.experiment is not None
        identity = (candidate.artifact.uri, candidate.artifact.sha256)
        if identity != self._identity or self._model is None:
            started = time.perf_counter()
            try:
                model = await asyncio.to_thread(self.load_model, candidate)
            except Exception as e:
                self._failed(plan, e)
                return False
            self._drop_candidate()
            self._identity, self._model = identity, model
            log.info(
                "candidate %s loaded in %.2f s",
                candidate.version,
                time.perf_counter() - started,
                extra={"experiment": plan.experiment, "version": candidate.version},
            )
        assert self._model is not None
        role = SHADOW if plan.strategy == SHADOW else CANDIDATE
        variant = self._variants.get(role)
        if variant is None or variant.version != candidate.version:
            variant = self.make_variant(role, candidate.version, self._model)
            self._variants[role] = variant
        percent = plan.shadow_sample_rate if role == SHADOW else plan.weight
        active = ActivePlan(
            plan,
            self.champion,
            candidate=variant if role == CANDIDATE else None,
            shadow=variant if role == SHADOW else None,
            splitter=Splitter(plan.experiment, percent),
            sticky_field=plan.sticky_key or self.sticky_field,
            sticky_alias=None if plan.sticky_key else self.sticky_alias,
        )
        self.failed = None
        self._swap(active)
        log.info(
            "traffic plan %s in effect: %s %s at %d%%",
            plan.revision,
            plan.strategy,
            candidate.version,
            percent,
            extra={"experiment": plan.experiment, "revision": plan.revision},
        )
        return True

    def _drop_candidate(self) -> None:
        self._identity, self._model = None, None
        self._variants.clear()

    def _failed(self, plan: TrafficPlan, error: Exception) -> None:
        candidate = plan.candidate
        assert candidate is not None
        reason = failure_reason(error)
        # The message in the text itself: BentoML's log format drops `extra` fields.
        log.error(
            "candidate %s of experiment %s (plan %s) could not be loaded: %s (%s); serving the "
            "champion only",
            candidate.version,
            plan.experiment,
            plan.revision,
            error,
            reason,
            extra={"experiment": plan.experiment, "revision": plan.revision, "reason": reason},
        )
        self._drop_candidate()
        self.failed = plan
        self._failed_at = time.monotonic()
        self._swap(ActivePlan(plan, self.champion), error_reason=reason)

    def _swap(self, active: ActivePlan, error_reason: str | None = None) -> None:
        if self.on_shadow is not None:
            self.on_shadow(active.shadow)  # before the plan: its first rows find the worker
        self.active = active
        self._export(active, error_reason)

    def _export(self, active: ActivePlan, error_reason: str | None) -> None:
        plan = active.plan
        labels = (self.model_name, plan.experiment or "", plan.revision if plan.active else "")
        if self._weight_labels is not None and self._weight_labels != labels:
            self.metrics.candidate_weight.remove(*self._weight_labels)
        self.metrics.candidate_weight.labels(*labels).set(active.weight)
        self._weight_labels = labels
        if self._error_labels is not None:
            self.metrics.candidate_load_error.remove(*self._error_labels)
            self._error_labels = None
        if error_reason is not None and plan.candidate is not None:
            self._error_labels = (*labels, plan.candidate.version, error_reason)
            self.metrics.candidate_load_error.labels(*self._error_labels).set(1)

    async def follow(self, file: TrafficFile, interval_s: float) -> None:
        """Apply every new plan the file holds, checking every `interval_s`; until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.poll(file)
            except Exception:
                log.exception("applying the traffic plan failed; keeping the plan in effect")

    async def poll(self, file: TrafficFile) -> None:
        plan = await asyncio.to_thread(file.read)
        if plan is not None:
            await self.apply(plan)
        elif self.failed is not None and time.monotonic() - self._failed_at >= self.retry_s:
            await self.apply(self.failed)
