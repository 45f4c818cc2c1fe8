"""The data plane, independent of transport: validate -> route -> limit -> features -> model
-> answer.

The HTTP app (app.py) and the BentoML service only translate bytes to calls on `Runtime`. Which
variant answers (champion or an experiment's candidate) is the active plan's decision
(variants.py, plans.py); shadow scoring is shadow.py's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from rtml.api.common import ArtifactRef, missing_digest, unverified_warning
from rtml.api.experiment import Candidate
from rtml.api.signature import check_signature, describe
from rtml.api.traffic import CHAMPION_ONLY, TrafficPlan
from rtml.artifacts import ArtifactError, artifact_bytes
from rtml.contract import TERMINATION_MESSAGE_PATH
from rtml_runtime.assess import Assessment, Assessor
from rtml_runtime.audit import AuditWriter
from rtml_runtime.breaker import CircuitBreaker, State
from rtml_runtime.cache import TTLCache
from rtml_runtime.clock import SYSTEM_CLOCK, Clock
from rtml_runtime.config import RuntimeConfig
from rtml_runtime.deadline import DeadlineExceeded, within
from rtml_runtime.ensemble import CALL_OUTCOMES, Member
from rtml_runtime.errors import RequestError, bad_input, too_many_rows
from rtml_runtime.features import FeatureReader, merge_features
from rtml_runtime.fused import fusable, fuse, release_bytes
from rtml_runtime.metrics import RuntimeMetrics, VariantMetrics
from rtml_runtime.onnx_model import ModelError, OnnxModel
from rtml_runtime.plans import PlanSwitch
from rtml_runtime.ranking import (
    RankRequest,
    cache_key,
    instance_id,
    is_ranking,
    parse_filters,
    parse_top_k,
    ranked,
)
from rtml_runtime.ratelimit import TokenBucket
from rtml_runtime.shadow import ShadowScorer
from rtml_runtime.v2codec import InferRequest
from rtml_runtime.variants import CHAMPION, Variant, build_variant, feature_row

T = TypeVar("T")
log = logging.getLogger("rtml.runtime")
# Reads of a made-up entity before the pod is ready ("0" encodes as a STRING and an INT64 key).
FEATURE_WARMUP_READS = 3
FEATURE_WARMUP_ENTITY = "0"
MAX_ENTITY_ID_BYTES = 1024  # a key, not a payload
MAX_FEATURE_VALUE = float(np.finfo(np.float32).max)  # what the models' float32 inputs hold
_INT64 = (-(2**63), 2**63 - 1)
_DIGITS = re.compile(r"[+-]?[0-9]{1,19}")


def _int64(value: str | int) -> int | None:
    """An INT64 entity id from an integer or a string of one, or None."""
    if isinstance(value, str):
        if not _DIGITS.fullmatch(value):
            return None
        value = int(value)
    return value if _INT64[0] <= value <= _INT64[1] else None


V2_OUTPUT = "score"  # the one output of /v2/models/{name}/infer


def require_digest(art: ArtifactRef, field: str) -> None:
    """Refuse an artifact without a sha256 unless it opts out (allowUnverified), and warn when
    one loads unverified. The API models refuse such a spec already; this holds for one
    built without validation too (a model_copy), since the runtime is where the bytes load."""
    if art.sha256 is not None:
        return
    if not art.allow_unverified:
        raise ArtifactError(missing_digest(field))
    # The words go in the message itself: BentoML's log format drops `extra` fields.
    log.warning(
        "loading an unverified artifact: %s",
        unverified_warning(field, art.uri),
        extra={"field": field, "uri": art.uri},
    )


@dataclass(slots=True)
class Prediction:
    score: float
    degraded: bool
    outcome: str  # ok | fallback
    variant: Variant
    # The feature values the model scored (for a shadow scoring), None for a fallback answer.
    features: dict[str, Any] | None = None
    # The decision, for a Model with spec.rules, spec.ensemble or spec.decision (score: NaN
    # when no model gave one).
    assessment: Assessment | None = None


class Runtime:
    """One Model's serving state. Not ready until `start()` has loaded, checked and warmed it."""

    def __init__(
        self,
        config: RuntimeConfig,
        clock: Clock = SYSTEM_CLOCK,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.spec = config.model.spec
        self.metrics = metrics or RuntimeMetrics()
        self.m: VariantMetrics = self.metrics.variant(config.name, config.version, CHAMPION)
        self.ready = False
        self.not_ready_reason = "starting"
        self.model: OnnxModel | None = None
        self.backup: OnnxModel | None = None
        self.reader: FeatureReader | None = None
        self.view = config.feature_view
        self.request_features = (
            list(self.spec.features.request_features) if self.spec.features else []
        )
        # Derived once: every request consults them.
        self.request_feature_set = frozenset(self.request_features)
        self.entity_field = config.entity_key or "entity_id"
        self.limiter = TokenBucket.from_spec(self.spec.rate_limit, clock=clock)
        self.cache: TTLCache[str, dict[str, Any] | None] = TTLCache(
            config.settings.cache_entries, config.settings.cache_ttl_seconds, clock=clock
        )
        # Whole ranking answers, by canonical body (RTML_RANK_CACHE_TTL_SECONDS; 0: off).
        self.rank_cache: TTLCache[str, dict[str, Any]] = TTLCache(
            config.settings.rank_cache_entries, config.settings.rank_cache_ttl_seconds, clock=clock
        )
        self.filterable = frozenset(
            [*(f.name for f in self.view.spec.served_features), *self.request_features]
            if self.view is not None
            else self.request_features
        )
        slow = self.spec.slow_call_ms
        self.feature_breaker = CircuitBreaker.from_spec(
            "features",
            self.spec.circuit_breaker,
            slow,
            clock=clock,
            on_state_change=self._breaker_changed,
        )
        self.model_breaker = CircuitBreaker.from_spec(
            "model",
            self.spec.circuit_breaker,
            slow,
            clock=clock,
            on_state_change=self._breaker_changed,
        )
        for dep in ("features", "model"):
            self.metrics.breaker_state.labels(config.name, config.version, CHAMPION, dep).set(0)
        self.timeout_s = self.spec.slo.timeout_ms / 1000
        self.feature_budget_s = self.spec.slo.feature_budget_ms / 1000
        self.columns: list[str] = []
        self.shadow = ShadowScorer(config.settings.shadow_queue)
        self.assessor: Assessor | None = None  # set by load() when the Model decides
        self.audit: AuditWriter | None = None  # set by load() with spec.audit

    # Set by load(): the champion and the traffic plan in effect.
    plans: PlanSwitch

    # -- lifecycle ---------------------------------------------------------------------------
    def _breaker_changed(self, name: str, old: State, new: State) -> None:
        log.warning(
            "circuit breaker changed state",
            extra={"dependency": name, "from": old.name, "to": new.name},
        )
        self.metrics.breaker_state.labels(
            self.config.name, self.config.version, CHAMPION, name
        ).set(new.gauge)

    def load(self, reader: FeatureReader | None = None) -> None:
        """Fetch, verify, load, check the signature and warm up. Raises on any failure."""
        # With an ensemble the models' bytes are kept until they are fused (fused.py).
        fusing = self.spec.decides and self.spec.ensemble is not None
        self.model = self._load_checked(self.spec.artifact, "spec.artifact", keep_bytes=fusing)
        self.columns = self.model.feature_names
        fallback = self.spec.fallback
        if fallback.mode == "model" and fallback.artifact is not None:
            self.backup = self._load_checked(
                fallback.artifact, "spec.fallback.artifact", min(self.spec.warmup.requests, 10)
            )
        if self.spec.decides:
            members = self._load_members()
            fused = None
            if fusable(self.model, [m.model for m in members]):
                fused = fuse([self.model, *(m.model for m in members)])
            release_bytes([self.model, *(m.model for m in members)])
            self.assessor = Assessor(self.config.name, self.spec, members, self.metrics, fused)
        if self.spec.audit is not None and self.assessor is not None:
            self.audit = self._audit_writer()
        self.reader = reader
        champion = Variant(
            CHAMPION,
            self.config.version,
            self.model,
            self.columns,
            self.model_breaker,
            self.m,
        )
        self.plans = PlanSwitch(
            self.config.name,
            champion,
            load_model=self.load_candidate,
            make_variant=self.make_variant,
            metrics=self.metrics,
            sticky_field=self.entity_field,
            sticky_alias="entity_id" if self.view is not None else None,
            on_shadow=self.shadow.use,
        )

    def _load_members(self) -> list[Member]:
        """spec.ensemble's models, each fetched, digest-checked and warmed up as spec.artifact
        is, each with its own model breaker (rtml_circuit_breaker_state's `variant` is
        `ensemble`, its `version` the member's name)."""
        ensemble = self.spec.ensemble
        members = []
        for i, m in enumerate(ensemble.models if ensemble is not None else []):
            field = f"spec.ensemble.models[{i}].artifact"
            model = self._load_checked(m.artifact, field, keep_bytes=True)
            gauge = self.metrics.breaker_state.labels(self.config.name, m.name, "ensemble", "model")
            gauge.set(0)

            def changed(
                name: str, old: State, new: State, member: str = m.name, g: Any = gauge
            ) -> None:
                log.warning(
                    "circuit breaker changed state",
                    extra={"dependency": name, "member": member, "from": old.name, "to": new.name},
                )
                g.set(new.gauge)

            breaker = CircuitBreaker.from_spec(
                "model",
                self.spec.circuit_breaker,
                self.spec.slow_call_ms,
                clock=self.clock,
                on_state_change=changed,
            )
            calls = {
                o: self.metrics.model_calls.labels(self.config.name, m.name, o)
                for o in CALL_OUTCOMES
            }
            members.append(Member(m.name, model, model.feature_names, m.weight, breaker, calls))
        return members

    def _audit_writer(self) -> AuditWriter:
        """spec.audit's writer: to RTML_AUDIT_REDIS_URL, else the online store's Redis; with
        the sqlite profile and no such setting the runtime refuses to become ready."""
        assert self.spec.audit is not None
        settings = self.config.settings
        if settings.audit_redis_url is not None:
            url = settings.audit_redis_url.get_secret_value()
        elif self.config.store.kind == "redis":
            url = self.config.store.redis_url_with_password
        else:
            raise ModelError(
                "spec.audit needs a Redis for its stream, and the online store is "
                f"{self.config.store.kind}: set RTML_AUDIT_REDIS_URL (in a cluster, the "
                "chart's runtime.auditRedis.existingSecret) or serve with the redis profile"
            )
        name = self.config.name
        records = self.metrics.audit_records
        return AuditWriter(
            self.spec.audit,
            url,
            settings.audit_queue,
            written=records.labels(name, "written"),
            dropped=records.labels(name, "dropped"),
            failed=records.labels(name, "failed"),
            depth=self.metrics.audit_queue.labels(name),
        )

    def load_candidate(self, candidate: Candidate) -> OnnxModel:
        """An experiment's candidate, fetched, verified, checked and warmed up as the champion
        is (in a worker thread: the champion keeps serving). Raises on any failure."""
        return self._load_checked(
            candidate.artifact,
            f"the candidate {candidate.version}'s artifact",
            path="the Experiment's spec.candidate.artifact",
        )

    def _load_checked(
        self,
        art: ArtifactRef,
        field: str,
        warmup: int | None = None,
        path: str | None = None,
        keep_bytes: bool = False,
    ) -> OnnxModel:
        """One artifact: fetched and digest-checked, loaded, its signature checked against the
        Model's features (`field` names it in the error), warmed up. `path` is its field in
        the manifest (default: `field`), which a missing digest is said against; `keep_bytes`
        keeps the model's bytes on it for fusing (fused.py)."""
        require_digest(art, path or field)
        settings = self.config.settings
        file, data = artifact_bytes(
            art.uri,
            art.sha256,
            self.config.base_dir,
            settings.artifact_dir,
            pvc_root=settings.pvc_root,
            max_bytes=settings.max_artifact_bytes,
        )
        model = OnnxModel(
            file,
            data=data,
            sha256=art.sha256,  # verified against it
            columns=self.spec.feature_columns,
            output=self.spec.output_choice,
            keep_bytes=keep_bytes,
        )
        del data  # the session holds what it needs
        _ = model.feature_names  # a wide input without names fails here, not on a request
        self._check_signature(model, field)
        model.warmup(self.spec.warmup.requests if warmup is None else warmup)
        return model

    def make_variant(self, role: str, version: str, model: OnnxModel) -> Variant:
        return build_variant(
            role, version, model, self.config.name, self.spec, self.metrics, self.clock
        )

    def _check_signature(self, model: OnnxModel, field: str) -> None:
        mismatches = check_signature(
            model.inputs,
            self.view,
            self.request_features,
            model.declared_features,
            columns=self.spec.feature_columns,
        )
        if mismatches:
            raise ModelError(f"{field} does not fit its features: {describe(mismatches)}")

    def refuse(self, reason: str) -> None:
        """Stay up and not ready, saying why: at the readiness endpoint, in the log, and in the
        termination message the kubelet keeps when the startup probe gives up."""
        self.ready = False
        self.not_ready_reason = reason
        # The reason goes in the message itself: BentoML's log format drops `extra` fields.
        log.error("the runtime will not become ready: %s", reason, extra={"reason": reason})
        report_termination_reason(reason)

    async def start(
        self, reader: FeatureReader | None = None, plan: TrafficPlan = CHAMPION_ONLY
    ) -> None:
        """Load and warm up; on an artifact or model error stay up, not ready, with the reason
        (served by the readiness endpoint and left for the kubelet as the termination message:
        when the startup probe gives up, the Model's status says why).

        `plan` is put into effect before the pod is ready, so a pod started during an
        experiment answers by it from its first request (a candidate that fails to load does
        not keep the pod from becoming ready: the champion serves)."""
        try:
            await asyncio.to_thread(self.load, reader)
        except (ArtifactError, ModelError) as e:
            self.refuse(str(e))
            return
        await self._warm_features()
        await self.plans.apply(plan)
        self.ready = True
        self.not_ready_reason = ""
        self.metrics.ready.labels(self.config.name).set(1)
        log.info(
            "ready",
            extra={
                "model": self.config.name,
                "version": self.config.version,
                "inputs": len(self.columns),
            },
        )

    async def _warm_features(self) -> None:
        """Open the feature store's connection before the pod is ready. Otherwise the first
        request pays the connect (and the reader's first-call costs) inside its feature budget,
        5 ms in the fraud example, and is answered by the fallback. A store that does not answer
        here is logged, not fatal: on requests its breaker and the fallback decide."""
        if self.reader is None:
            return
        for _ in range(FEATURE_WARMUP_READS):
            try:
                await asyncio.wait_for(self.reader.read(FEATURE_WARMUP_ENTITY), timeout=2.0)
            except Exception as e:
                log.warning(
                    "the feature store did not answer the warm-up read: %s",
                    str(e) or type(e).__name__,  # a TimeoutError has no message
                    extra={"model": self.config.name},
                )
                return

    async def close(self) -> None:
        await asyncio.to_thread(self.shadow.close)
        if self.assessor is not None:
            self.assessor.close()
        if self.audit is not None:
            await self.audit.close()
        if self.reader is not None:
            await self.reader.close()

    # -- request path ------------------------------------------------------------------------
    def check_rate(self, m: VariantMetrics) -> None:
        if self.limiter is not None and not self.limiter.try_acquire():
            m.outcomes["rate_limited"].inc()
            raise RequestError(
                429,
                "rate_limited",
                "the request rate is over spec.rateLimit",
                retry_after_s=self.limiter.retry_after_s(),
            )

    def entity_id(self, payload: dict[str, Any], where: str = "") -> str | None:
        """The entity id, checked to be one the feature store can encode, so a caller's bad
        id is a 400 naming the field and never a failed read counted against the store's
        breaker (an unencodable id used to open it for every caller)."""
        if self.view is None:
            return None
        key = self.entity_field
        field = f"{where}{key}"
        value = payload.get(key, payload.get("entity_id"))
        if value is None:
            raise bad_input(f"the entity id is missing: send it as {key!r}", field)
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise bad_input(f"{key} must be a string or an integer", field)
        if self.view.spec.entity.value_type == "INT64":
            number = _int64(value)
            if number is None:
                raise bad_input(
                    f"{key} must be an integer from -2**63 to 2**63-1 (the FeatureView's "
                    "entity is INT64)",
                    field,
                )
            return str(number)
        text = str(value)
        try:
            encoded = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise bad_input(f"{key} is not valid Unicode text", field) from None
        if encoded > MAX_ENTITY_ID_BYTES:
            raise bad_input(f"{key} is over {MAX_ENTITY_ID_BYTES} bytes", field)
        return text

    def request_values(self, payload: dict[str, Any], prefix: str = "features") -> dict[str, Any]:
        given = payload.get("features", {})
        if not isinstance(given, dict):
            raise bad_input("features must be an object of name: number", prefix)
        allowed = self.request_feature_set
        for name, value in given.items():
            if name not in allowed:
                field = f"{prefix}.{name}"
                raise bad_input(
                    f"unknown feature {name!r}; this model takes {sorted(allowed) or 'none'} "
                    "in the request",
                    field,
                )
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise bad_input(f"feature {name!r} must be a number", f"{prefix}.{name}")
            if isinstance(value, int) and abs(value) > MAX_FEATURE_VALUE:
                raise bad_input(f"feature {name!r} is out of range", f"{prefix}.{name}")
            if not math.isfinite(value):
                raise bad_input(
                    f"feature {name!r} must be finite (not NaN or Infinity)", f"{prefix}.{name}"
                )
            if abs(value) > MAX_FEATURE_VALUE:
                raise bad_input(f"feature {name!r} is out of range", f"{prefix}.{name}")
        missing = [n for n in self.request_features if n not in given]
        if missing:
            raise bad_input(f"missing request feature {missing[0]!r}", f"{prefix}.{missing[0]}")
        return given

    async def _stored_features(
        self, entity_id: str, m: VariantMetrics
    ) -> tuple[dict[str, Any] | None, bool]:
        """(features or None, failed) — failed means the store could not answer in time. One
        read per request, counted on the metrics of the variant that answers it."""
        cached = self.cache.get(entity_id)
        if cached is not None:
            m.cache_hits.inc()
            return cached, False
        m.cache_misses.inc()
        assert self.reader is not None
        if not self.feature_breaker.allow():
            return None, True
        start = time.perf_counter()
        try:
            values = await within(self.reader.read(entity_id), self.feature_budget_s)
        except asyncio.CancelledError:
            # The request's own deadline cancelled us: still a failed call for the breaker,
            # or a half-open probe would be lost and the breaker never leave half-open.
            self.feature_breaker.record(time.perf_counter() - start, ok=False)
            raise
        except Exception as e:
            elapsed = time.perf_counter() - start
            self.feature_breaker.record(elapsed, ok=False)
            m.feature_duration.observe(elapsed)
            log.debug("feature read failed", extra={"error": type(e).__name__})
            return None, True
        elapsed = time.perf_counter() - start
        self.feature_breaker.record(elapsed, ok=True)
        m.feature_duration.observe(elapsed)
        if values is not None:
            self.cache.put(entity_id, values)
        return values, False

    def _score(self, variant: Variant, predict: Callable[[], T]) -> T | None:
        """The variant's model `predict` behind its circuit breaker: None when the breaker is
        open or the call fails (and counts it)."""
        breaker = variant.breaker
        if not breaker.allow():
            return None
        start = time.perf_counter()
        try:
            scores = predict()
        except Exception:
            breaker.record(time.perf_counter() - start, ok=False)
            log.exception("model inference failed", extra={"variant": variant.role})
            return None
        breaker.record(time.perf_counter() - start, ok=True)
        return scores

    def _fallback(
        self, dependency: str, merged_defaults: dict[str, Any], variant: Variant
    ) -> Prediction:
        fb = self.spec.fallback
        breaker = self.feature_breaker if dependency == "features" else variant.breaker
        if fb.mode == "static" and fb.value is not None:
            return Prediction(float(fb.value), True, "fallback", variant)
        if fb.mode == "model" and self.backup is not None:
            backup = self.backup
            score = backup.predict_one(feature_row(merged_defaults, backup.feature_names))
            return Prediction(score, True, "fallback", variant)
        if fb.mode == "defaultFeatures" and dependency == "features":
            model, row = variant.model, feature_row(merged_defaults, variant.columns)
            fallback_score = self._score(variant, lambda: model.predict_one(row))
            if fallback_score is not None:
                return Prediction(fallback_score, True, "fallback", variant)
        raise RequestError(
            503,
            f"{dependency}_unavailable",
            f"the {'feature store' if dependency == 'features' else 'model'} is unavailable "
            f"and spec.fallback.mode is {fb.mode}",
            retry_after_s=max(1.0, breaker.retry_after_s()),
        )

    async def _predict_one(
        self, payload: dict[str, Any], prefix: str, variant: Variant
    ) -> Prediction:
        entity = self.entity_id(payload, prefix[: -len("features")])
        request = self.request_values(payload, prefix)
        stored: dict[str, Any] | None = None
        failed = False
        if entity is not None:
            stored, failed = await self._stored_features(entity, variant.metrics)
            if failed and self.assessor is None:
                merged, _ = merge_features(self.view, None, request)
                return self._fallback("features", merged, variant)
        if self.assessor is not None:
            return await self._assess(entity, request, stored, failed, variant)
        merged, used_default = merge_features(self.view, stored, request)
        model, row = variant.model, feature_row(merged, variant.columns)
        score = self._score(variant, lambda: model.predict_one(row))
        if score is None:
            return self._fallback("model", merged, variant)
        degraded = entity is not None and used_default
        return Prediction(score, degraded, "fallback" if degraded else "ok", variant, merged)

    async def _assess(
        self,
        entity: str | None,
        request: dict[str, Any],
        stored: dict[str, Any] | None,
        failed: bool,
        variant: Variant,
    ) -> Prediction:
        """Rules, then the models, then the decision (assess.py). A failed feature read is
        answered by spec.fallback as without decisions, after the rules (which see the
        request and the view's defaults), and its score decided by the thresholds."""
        assert self.assessor is not None
        merged, used_default = merge_features(self.view, stored, request)
        degraded = failed or (entity is not None and used_default)
        given = request if entity is None else {**request, self.entity_field: entity}
        outcome = self.assessor.check_rules(given, merged)
        if outcome.blocking:
            a = self.assessor.blocked(outcome, degraded)
            return Prediction(math.nan, degraded, "ok", variant, merged, a)
        if failed:
            p = self._fallback("features", merged, variant)
            p.assessment = self.assessor.on_score(outcome, p.score, {}, True)
            return p
        model, row = variant.model, feature_row(merged, variant.columns)
        a = self.assessor.assess(outcome, merged, model, row, variant.breaker, degraded)
        score = math.nan if a.score is None else a.score
        return Prediction(score, a.degraded, "fallback" if a.degraded else "ok", variant, merged, a)

    def _shadow(self, shadow: Variant | None, p: Prediction) -> None:
        """Hand the row the champion scored to the shadow worker (never waited for)."""
        if shadow is not None and p.features is not None:
            self.shadow.submit(shadow, p.features)

    def _refuse_decisions(self, where: str) -> None:
        """A path that cannot apply spec.rules: refused, or it would let a request past them."""
        if self.assessor is not None:
            raise RequestError(
                400,
                "decisions_not_applied",
                f"{where} does not apply spec.rules, spec.ensemble or spec.decision, which "
                "this Model declares: send each request to /predict (or /predict_batch)",
            )

    def _require_ready(self) -> None:
        if not self.ready:
            raise RequestError(503, "not_ready", f"the model is not ready: {self.not_ready_reason}")

    def _within_deadline(self, start: float, m: Any) -> float:
        """Seconds since `start`; a 504 (counted as an error) past spec.slo.timeoutMs."""
        elapsed = time.perf_counter() - start
        if elapsed > self.timeout_s:
            m.outcomes["error"].inc()
            raise RequestError(
                504,
                "deadline_exceeded",
                f"no answer within spec.slo.timeoutMs ({self.spec.slo.timeout_ms} ms)",
            )
        return elapsed

    async def predict(self, payload: Any) -> dict[str, Any]:
        self._require_ready()
        if not isinstance(payload, dict):
            raise bad_input("the body must be a JSON object", None)
        plan = self.plans.active  # read once: one consistent plan for the whole request
        variant = plan.answering(payload)
        m = variant.metrics
        self.check_rate(m)
        start = time.perf_counter()
        m.inflight.inc()
        try:
            # The only await inside is the feature read, already cut off at featureBudgetMs
            # (<= timeoutMs by the API's rules); scoring is synchronous and cannot be
            # interrupted. So the deadline is checked, not armed: a timer per request costs
            # ~15% of this path's CPU (py-spy) and could only fire after the work is done.
            p = await self._predict_one(payload, "features", variant)
        except RequestError as e:
            m.outcomes["rejected" if e.status == 503 else "error"].inc()
            raise
        finally:
            m.inflight.dec()
        elapsed = self._within_deadline(start, m)
        m.duration.observe(elapsed)
        m.outcomes[p.outcome].inc()
        if not math.isnan(p.score):
            m.score.observe(p.score)
        if plan.shadow is not None:
            self._shadow(plan.shadowing(payload), p)
        answer = {
            "score": p.score,
            "model": self.config.name,
            "version": variant.version,
            "variant": variant.role,
            "degraded": p.degraded,
            "latency_ms": round(elapsed * 1000, 3),
        }
        if p.assessment is not None:
            return self._audited(self._decided(answer, p), payload)
        return answer

    def _audited(self, answer: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        """Hand the answer to the audit writer (queued, never waited for)."""
        if self.audit is not None:
            inputs = {
                self.entity_field: payload.get(self.entity_field, payload.get("entity_id")),
                "features": payload.get("features", {}),
            }
            self.audit.submit(answer, inputs, answer["requestId"])
        return answer

    def _batch_row(self, payload: dict[str, Any], p: Prediction) -> dict[str, Any]:
        row = {
            "score": p.score,
            "degraded": p.degraded,
            "version": p.variant.version,
            "variant": p.variant.role,
        }
        if p.assessment is None:
            return row
        return self._audited({"model": self.config.name, **self._decided(row, p)}, payload)

    def _decided(self, answer: dict[str, Any], p: Prediction) -> dict[str, Any]:
        """An answer with its decision; `score` is null when no model gave one."""
        assert p.assessment is not None
        answer.update(p.assessment.fields())
        answer["requestId"] = uuid.uuid4().hex  # names the audit record of this answer
        if math.isnan(p.score):
            answer["score"] = None
        return answer

    async def predict_batch(self, payload: Any) -> dict[str, Any]:
        self._require_ready()
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise bad_input('the body must be {"instances": [...]}', "instances")
        rows = payload["instances"]
        if not rows:
            raise bad_input("instances must not be empty", "instances")
        if len(rows) > self.config.settings.max_batch_rows:
            raise too_many_rows(
                f"{len(rows)} instances is over the limit of "
                f"{self.config.settings.max_batch_rows} per request (RTML_MAX_BATCH_ROWS)",
                "instances",
            )
        if is_ranking(payload, (self.entity_field, "entity_id")):
            self._refuse_decisions("the ranking form of /predict_batch")
            return await self.rank(payload)
        plan = self.plans.active
        champion = plan.champion.metrics  # the batch as a whole: rate limit, in flight
        self.check_rate(champion)
        start = time.perf_counter()
        champion.inflight.inc()
        try:
            for i, row in enumerate(rows):
                if not isinstance(row, dict):
                    raise bad_input("each instance must be an object", f"instances[{i}]")
            preds = await within(
                asyncio.gather(
                    *(
                        self._predict_one(r, f"instances[{i}].features", plan.answering(r))
                        for i, r in enumerate(rows)
                    )
                ),
                self.timeout_s,
            )
        except DeadlineExceeded as e:
            champion.outcomes["error"].inc()
            raise RequestError(
                504, "deadline_exceeded", "the batch missed spec.slo.timeoutMs"
            ) from e
        finally:
            champion.inflight.dec()
        elapsed = time.perf_counter() - start
        answered: set[Variant] = set()
        for p in preds:
            p.variant.metrics.outcomes[p.outcome].inc()
            answered.add(p.variant)
        for v in answered:  # the batch's latency once for each variant that answered in it
            v.metrics.duration.observe(elapsed)
        if plan.shadow is not None:
            for r, p in zip(rows, preds, strict=True):
                self._shadow(plan.shadowing(r), p)
        only = next(iter(answered)) if len(answered) == 1 else None
        return {
            "predictions": [self._batch_row(r, p) for r, p in zip(rows, preds, strict=True)],
            "model": self.config.name,
            # Who answered every row; "mixed" when the rows were split between variants.
            "version": only.version if only is not None else "mixed",
            "variant": only.role if only is not None else "mixed",
            "latency_ms": round(elapsed * 1000, 3),
        }

    def _rank_request(self, payload: dict[str, Any]) -> RankRequest:
        top_k = parse_top_k(payload.get("topK"))
        filters = parse_filters(payload.get("filters"), self.filterable)
        ids = []
        for i, row in enumerate(payload["instances"]):
            if not isinstance(row, dict):
                raise bad_input("each instance must be an object", f"instances[{i}]")
            ids.append(instance_id(row, f"instances[{i}]"))
        return RankRequest(top_k, filters, ids)

    async def rank(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The ranking form of /predict_batch (ranking.py): N candidates for one entity, one
        feature read, one model call, by the one variant the entity's sticky key chooses.
        Checked, not armed, against timeoutMs, as /predict is (the one await is the read)."""
        variant = self.plans.active.answering(payload)
        m = variant.metrics
        self.check_rate(m)
        start = time.perf_counter()
        # Only valid bodies are kept, so a hit needs no checking again.
        key = cache_key(payload, variant.role, variant.version) if self.rank_cache.ttl_s else ""
        hit = self.rank_cache.get(key) if key else None
        if hit is not None:
            m.outcomes["ok"].inc(len(hit["predictions"]))
            return {**hit, "cached": True, "latency_ms": self._ms(start)}
        m.inflight.inc()
        try:
            request = self._rank_request(payload)
            entity = self.entity_id(payload)
            candidates = [
                self.request_values(row, f"instances[{i}].features")
                for i, row in enumerate(payload["instances"])
            ]
            rows, preds = await self._rank_rows(entity, candidates, request, variant)
        except RequestError as e:
            m.outcomes["rejected" if e.status == 503 else "error"].inc()
            raise
        finally:
            m.inflight.dec()
        elapsed = self._within_deadline(start, m)
        m.duration.observe(elapsed)
        for p in preds:
            m.outcomes[p.outcome].inc()
        order = ranked([p.score for p in preds], request.top_k)
        predictions = []
        for rank, j in enumerate(order, start=1):
            p, i = preds[j], rows[j]
            out: dict[str, Any] = {"index": i, "score": p.score, "degraded": p.degraded}
            if request.ids[i] is not None:
                out["id"] = request.ids[i]
            if request.top_k is not None:
                out["rank"] = rank
            predictions.append(out)
        answer = {
            "predictions": predictions,
            "candidates": len(request.ids),
            "scored": len(preds),
            "model": self.config.name,
            "version": variant.version,
            "variant": variant.role,
            "cached": False,
        }
        if key and not any(p.degraded for p in preds):  # a fallback answer is not kept
            self.rank_cache.put(key, answer)
        return {**answer, "latency_ms": round(elapsed * 1000, 3)}

    @staticmethod
    def _ms(start: float) -> float:
        return round((time.perf_counter() - start) * 1000, 3)

    async def _rank_rows(
        self,
        entity: str | None,
        candidates: list[dict[str, Any]],
        request: RankRequest,
        variant: Variant,
    ) -> tuple[list[int], list[Prediction]]:
        """(positions of the candidates kept by the filters, their predictions)."""
        stored: dict[str, Any] | None = None
        failed = False
        if entity is not None:
            stored, failed = await self._stored_features(entity, variant.metrics)
        rows: list[int] = []
        merged_rows: list[dict[str, Any]] = []
        used_default = False
        for i, given in enumerate(candidates):
            merged, used_default = merge_features(self.view, stored, given)
            if all(f.keeps(merged) for f in request.filters):
                rows.append(i)
                merged_rows.append(merged)
        if not merged_rows:
            return rows, []
        if failed:  # as /predict: spec.fallback answers each row, degraded
            return rows, [self._fallback("features", r, variant) for r in merged_rows]
        model, columns = variant.model, variant.columns
        matrix = [feature_row(r, columns) for r in merged_rows]
        scores = self._score(variant, lambda: model.predict_rows(matrix))
        if scores is None:
            return rows, [self._fallback("model", r, variant) for r in merged_rows]
        degraded = entity is not None and used_default  # the entity's read: the same for all
        outcome = "fallback" if degraded else "ok"
        return rows, [Prediction(s, degraded, outcome, variant) for s in scores]

    async def infer_v2(self, name: str, request: InferRequest) -> dict[str, Any]:
        """Open Inference Protocol v2: inputs are the model's own tensors, one row each
        (v2codec decodes the request and encodes this answer).

        The request has no entity: during an experiment the whole request goes to one variant
        by a random draw at the plan's weight (not sticky), and a shadow plan is not applied."""
        self._require_ready()
        if name != self.config.name:
            raise RequestError(404, "model_not_found", f"no model named {name!r}", "name")
        for i, output in enumerate(request.outputs):
            if output != V2_OUTPUT:
                raise bad_input(
                    f"no output named {output!r}; the model's output is {V2_OUTPUT!r}",
                    f"outputs[{i}].name",
                )
        self._refuse_decisions(f"/v2/models/{name}/infer")
        variant = self.plans.active.answering_drawn()
        m = variant.metrics
        self.check_rate(m)
        start = time.perf_counter()
        columns = request.inputs
        wanted = variant.columns
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise bad_input(f"missing input {missing[0]!r}", f"inputs.{missing[0]}")
        n = len(columns[wanted[0]])
        if any(len(columns[c]) != n for c in wanted) or n == 0:
            raise bad_input("every input must have the same, non-zero number of rows", "inputs")
        if n > self.config.settings.max_batch_rows:
            raise too_many_rows(
                f"{n} rows is over the limit of {self.config.settings.max_batch_rows} per "
                "request (RTML_MAX_BATCH_ROWS)",
                "inputs",
            )
        model = variant.model
        rows = np.asarray([columns[c] for c in wanted], dtype=np.float32).T
        scores = self._score(variant, lambda: model.predict(rows))
        if scores is None:
            m.outcomes["rejected"].inc()
            raise RequestError(503, "model_unavailable", "the model's circuit breaker is open")
        m.duration.observe(time.perf_counter() - start)
        m.outcomes["ok"].inc()
        return {
            "model_name": self.config.name,
            "model_version": variant.version,
            "id": request.id,
            "parameters": {"variant": variant.role},
            "outputs": [
                {
                    "name": V2_OUTPUT,
                    "shape": [n],
                    "datatype": "FP64",
                    "data": [float(s) for s in scores],
                }
            ],
        }

    def metadata_v2(self) -> dict[str, Any]:
        assert self.model is not None or not self.ready
        inputs = [{"name": c, "datatype": "FP32", "shape": [-1, 1]} for c in self.columns]
        return {
            "name": self.config.name,
            "versions": [self.config.version],
            "platform": "onnx",
            "inputs": inputs,
            "outputs": [{"name": V2_OUTPUT, "datatype": "FP64", "shape": [-1]}],
        }


def report_termination_reason(reason: str, path: str = TERMINATION_MESSAGE_PATH) -> None:
    """Write `reason` where the kubelet reads a stopped container's message. Only in a pod (the
    kubelet mounts the file; on a host there is none, and nothing is created in /dev)."""
    target = Path(path)
    if not target.is_file():
        return
    try:
        target.write_text(reason[-4000:])  # the kubelet keeps at most 4096 bytes
    except OSError as e:
        log.warning("could not write the termination message to %s: %s", path, e)
