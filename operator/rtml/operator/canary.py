"""The Experiment state machine, pure: (spec, status, facts) -> (status, traffic, events).

Pending -> Progressing -> Promoted | Completed | RolledBack, plus Paused and Aborted
(docs/experiments.md). Every bit of progress is in the status it returns: a restarted
operator reads the same status and takes the same decision, at the same step and weight.

One tick of the shell (rtml.operator.experiment) asks `needs()` what to measure, measures it
(the pods applying the plan, the candidate's metrics over the window) and calls `decide()`.
Like Flagger's scheduler: explicit phases, pure step helpers, a single rollback path.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from rtml.api.common import parse_duration
from rtml.api.experiment import FINAL_PHASES, AnalysisResult, ExperimentSpec, ExperimentStatus
from rtml.api.traffic import TrafficPlan, with_revision

# An inconclusive answer (no data, NaN) waits; after this many step intervals without a
# conclusive one the step counts as failed: fail closed, never pass on silence.
INCONCLUSIVE_INTERVALS = 5
HISTORY = 20  # analysis results kept in status (API.md)
POLL_SECONDS = 2.0  # how soon to look again while waiting for pods or requests

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class Facts:
    """What the shell observed this tick. Metrics are only asked for when `needs()` says so."""

    now: datetime
    generation: int | None = None
    pause_requested: bool = False
    abort_requested: bool = False
    # Why the experiment cannot start or go on (another Experiment holds the Model, the Model
    # is missing): it waits in Pending with this reason and message.
    blocked: tuple[str, str] | None = None
    # Every ready pod reports the plan revision in status (None: not asked).
    pods_applied: bool | None = None
    # The analysis readings over the window, "requests" included (None: not asked).
    readings: dict[str, float | None] | None = None
    # Prometheus could not answer (the error, in a sentence).
    metrics_unavailable: str | None = None


@dataclass(frozen=True)
class Needs:
    pods: bool = False  # is the current plan applied by every ready pod?
    window: tuple[datetime, datetime] | None = None  # analyse the candidate over [start, end]
    probe: bool = False  # paused for metrics: is Prometheus back?


@dataclass(frozen=True)
class Decision:
    status: ExperimentStatus
    events: list[Event] = field(default_factory=list)
    requeue_seconds: float | None = None

    @property
    def weight(self) -> int:
        return self.status.candidate_weight or 0


def step_weights(spec: ExperimentSpec) -> list[int]:
    """The candidate's share at each step: canary steps; one fixed step for abtest and shadow."""
    if spec.strategy == "abtest" and spec.abtest is not None:
        return [spec.abtest.candidate_weight]
    if spec.strategy == "shadow" and spec.shadow is not None:
        return [spec.shadow.sample_rate]
    return list(spec.canary.steps)


def step_seconds(spec: ExperimentSpec) -> float:
    """How long each step runs before its analysis decides (abtest: its whole duration)."""
    if spec.strategy == "abtest" and spec.abtest is not None:
        return parse_duration(spec.abtest.duration)
    return parse_duration(spec.canary.step_interval)


def traffic_plan(name: str, spec: ExperimentSpec, status: ExperimentStatus | None) -> TrafficPlan:
    """What the runtime pods must apply for this experiment now (with its revision)."""
    if status is None or status.phase not in ("Progressing", "Paused"):
        return TrafficPlan()
    weight = status.candidate_weight or 0
    shadow = spec.strategy == "shadow"
    return with_revision(
        TrafficPlan(
            experiment=name,
            strategy=spec.strategy,
            candidate=spec.candidate,
            weight=0 if shadow else weight,
            shadow_sample_rate=weight if shadow else 0,
            sticky_key=spec.sticky_key,
        )
    )


def variant(spec: ExperimentSpec) -> Literal["candidate", "shadow"]:
    """The metrics variant the candidate's requests are counted under."""
    return "shadow" if spec.strategy == "shadow" else "candidate"


def needs(spec: ExperimentSpec, status: ExperimentStatus | None, now: datetime) -> Needs:
    if status is None or status.phase in (None, "Pending", *FINAL_PHASES):
        return Needs()
    if status.phase == "Paused":
        return Needs(probe=status.paused_reason == "MetricsUnavailable")
    if status.window_start is None:
        return Needs(pods=True)
    due = status.window_start + timedelta(seconds=step_seconds(spec))
    return Needs(window=(status.window_start, now)) if now >= due else Needs()


def _final(
    status: ExperimentStatus, phase: str, now: datetime, verdict: str, event: Event
) -> Decision:
    return Decision(
        status.model_copy(
            update={
                "phase": phase,
                "candidate_weight": 0,
                "finished_at": now,
                "window_start": None,
                "paused_reason": None,
                "last_verdict": verdict,
            }
        ),
        [event],
    )


def _start(spec: ExperimentSpec, status: ExperimentStatus, name: str, facts: Facts) -> Decision:
    weight = step_weights(spec)[0]
    started = status.model_copy(
        update={
            "phase": "Progressing",
            "current_step": 0,
            "candidate_weight": weight,
            "started_at": status.started_at or facts.now,
            "step_started_at": facts.now,
            "window_start": None,
            "failed_analyses": 0,
            "paused_reason": None,
            "finished_at": None,
            "observed_generation": facts.generation,
        }
    )
    plan = traffic_plan(name, spec, started)
    started = started.model_copy(
        update={"traffic_revision": plan.revision, "last_verdict": f"step 1 at {weight}%"}
    )
    what = "sampled" if spec.strategy == "shadow" else "routed"
    message = (
        f"started {spec.strategy} of {spec.candidate.version} against Model {spec.model_ref}: "
        f"{weight}% of requests {what} to the candidate"
    )
    return Decision(started, [Event("Normal", "Started", message)], POLL_SECONDS)


def _at_step(
    spec: ExperimentSpec, status: ExperimentStatus, name: str, index: int, now: datetime
) -> ExperimentStatus:
    weight = step_weights(spec)[index]
    moved = status.model_copy(
        update={
            "current_step": index,
            "candidate_weight": weight,
            "step_started_at": now,
            "window_start": None,
        }
    )
    return moved.model_copy(update={"traffic_revision": traffic_plan(name, spec, moved).revision})


def _describe(results: list[AnalysisResult]) -> str:
    def one(r: AnalysisResult) -> str:
        value = "no data" if r.value is None else f"{r.value:.4g}"
        return f"{r.metric} {value} (max {r.max:g})"

    return ", ".join(one(r) for r in results)


def _history(status: ExperimentStatus, new: list[AnalysisResult]) -> list[AnalysisResult]:
    return [*status.analysis, *new][-HISTORY:]


def _analyse(spec: ExperimentSpec, status: ExperimentStatus, name: str, facts: Facts) -> Decision:
    """The window is over: promote to the next step, finish, fail, or wait for data."""
    readings = facts.readings or {}
    now = facts.now
    step = (status.current_step or 0) + 1
    requests = readings.get("requests")
    analysis = spec.analysis
    due_since = (status.window_start or now) + timedelta(seconds=step_seconds(spec))
    overdue = (now - due_since).total_seconds() >= INCONCLUSIVE_INTERVALS * step_seconds(spec)
    if requests is None or requests < analysis.min_requests:
        have = 0 if requests is None else int(requests)
        if not overdue:
            verdict = f"waiting: {have} of {analysis.min_requests} candidate requests"
            return Decision(status.model_copy(update={"last_verdict": verdict}), [], POLL_SECONDS)
    results = [
        AnalysisResult(
            time=now,
            metric=m.name,
            value=readings.get(m.name),
            max=m.max,
            passed=(v := readings.get(m.name)) is not None and v <= m.max,
        )
        for m in analysis.metrics
    ]
    inconclusive = [r for r in results if r.value is None]
    failed = [r for r in results if r.value is not None and not r.passed]
    if inconclusive and not failed and not overdue:
        names = ", ".join(r.metric for r in inconclusive)
        verdict = f"inconclusive: no data for {names}"
        return Decision(status.model_copy(update={"last_verdict": verdict}), [], POLL_SECONDS)
    low = requests is None or requests < analysis.min_requests
    if failed or inconclusive or low:
        return _failed_analysis(spec, status, name, facts, results, step, requests)

    measured = _describe(results) or "no metrics gated"
    passed = status.model_copy(update={"analysis": _history(status, results)})
    weights = step_weights(spec)
    if step < len(weights):
        moved = _at_step(spec, passed, name, step, now)
        verdict = f"step {step} passed; step {step + 1} at {moved.candidate_weight}%"
        message = (
            f"step {step} passed with {int(requests or 0)} candidate requests ({measured}); "
            f"raising the candidate to {moved.candidate_weight}%"
        )
        return Decision(
            moved.model_copy(update={"last_verdict": verdict}),
            [Event("Normal", "StepPassed", message)],
            POLL_SECONDS,
        )
    if spec.on_success == "promote":
        message = (
            f"every step passed ({measured}); promoting {spec.candidate.version} "
            f"into Model {spec.model_ref}"
        )
        return _final(passed, "Promoted", now, "promoted", Event("Normal", "Promoted", message))
    message = (
        f"every step passed ({measured}); traffic is back on the champion "
        f"and the Model is unchanged (onSuccess: keep)"
    )
    return _final(passed, "Completed", now, "completed", Event("Normal", "Completed", message))


def _failed_analysis(
    spec: ExperimentSpec,
    status: ExperimentStatus,
    name: str,
    facts: Facts,
    results: list[AnalysisResult],
    step: int,
    requests: float | None,
) -> Decision:
    failures = status.failed_analyses + 1
    if requests is None or requests < spec.analysis.min_requests:
        have = 0 if requests is None else int(requests)
        why = f"only {have} candidate requests (minRequests {spec.analysis.min_requests})"
    else:
        bad = [r for r in results if not r.passed]
        why = _describe(bad)
        over = [r for r in bad if r.value is not None]
        why = ("over the gate: " + _describe(over)) if over else f"no conclusive data: {why}"
    history = _history(status, results)
    counted = status.model_copy(update={"analysis": history, "failed_analyses": failures})
    limit = spec.analysis.failure_limit
    if failures >= limit:
        message = (
            f"step {step} failed at {status.candidate_weight}%: {why}; "
            f"{failures} of {limit} allowed failures reached, rolling back to the champion"
        )
        verdict = f"rolled back: {why}"
        return _final(
            counted, "RolledBack", facts.now, verdict, Event("Warning", "RolledBack", message)
        )
    message = (
        f"step {step} failed at {status.candidate_weight}%: {why}; "
        f"{failures} of {limit} allowed failures, analysing the step again"
    )
    again = counted.model_copy(
        update={"window_start": facts.now, "last_verdict": f"step {step} failed: {why}"}
    )
    return Decision(again, [Event("Warning", "AnalysisFailed", message)], POLL_SECONDS)


def _metrics_unavailable(spec: ExperimentSpec, status: ExperimentStatus, facts: Facts) -> Decision:
    error = facts.metrics_unavailable or "the metrics source did not answer"
    if spec.analysis.on_metrics_unavailable == "rollback":
        message = f"{error}; rolling back to the champion (onMetricsUnavailable: rollback)"
        event = Event("Warning", "RolledBack", message)
        return _final(status, "RolledBack", facts.now, "rolled back: metrics unavailable", event)
    message = (
        f"{error}; pausing at {status.candidate_weight}% until it answers again "
        "(onMetricsUnavailable: pause)"
    )
    paused = status.model_copy(
        update={
            "phase": "Paused",
            "paused_reason": "MetricsUnavailable",
            "last_verdict": "paused: metrics unavailable",
        }
    )
    return Decision(paused, [Event("Warning", "MetricsUnavailable", message)], POLL_SECONDS)


def decide(  # noqa: PLR0911 - one return per transition
    name: str, spec: ExperimentSpec, status: ExperimentStatus | None, facts: Facts
) -> Decision:
    """The next status of Experiment `name`, given what the shell observed."""
    status = status or ExperimentStatus()
    now = facts.now
    if status.phase in FINAL_PHASES:
        if facts.generation is None or facts.generation == status.observed_generation:
            return Decision(status)
        # An ended experiment stays as it ended; a later spec change is observed (kstatus: the
        # status is for this generation, not stuck In Progress) and changes nothing else.
        return Decision(status.model_copy(update={"observed_generation": facts.generation}))
    if facts.abort_requested:
        weight = status.candidate_weight or 0
        message = f"aborted by request at {weight}%; traffic is back on the champion"
        return _final(status, "Aborted", now, "aborted", Event("Warning", "Aborted", message))
    if status.phase in (None, "Pending"):
        if facts.blocked is not None:
            reason, message = facts.blocked
            pending = status.model_copy(
                update={"phase": "Pending", "paused_reason": None, "last_verdict": message}
            )
            events = [] if status.last_verdict == message else [Event("Warning", reason, message)]
            return Decision(pending, events, POLL_SECONDS * 5)
        return _start(spec, status, name, facts)
    if facts.generation is not None and facts.generation != status.observed_generation:
        # A changed spec (a newer candidate, other steps) is never promoted on the old one's
        # analysis: start again from the first step.
        restarted = _start(spec, status.model_copy(update={"analysis": []}), name, facts)
        message = f"the spec changed; starting again from step 1 at {restarted.weight}%"
        return replace(restarted, events=[Event("Normal", "Restarted", message)])
    if status.phase == "Paused":
        return _paused(spec, status, facts)
    return _progressing(name, spec, status, facts)


def _progressing(  # noqa: PLR0911 - one return per transition
    name: str, spec: ExperimentSpec, status: ExperimentStatus, facts: Facts
) -> Decision:
    now = facts.now
    step = (status.current_step or 0) + 1
    if facts.pause_requested:
        message = f"paused by request at {status.candidate_weight}%"
        paused = status.model_copy(
            update={"phase": "Paused", "paused_reason": "PausedByUser", "last_verdict": "paused"}
        )
        return Decision(paused, [Event("Normal", "Paused", message)])
    wants = needs(spec, status, now)
    if (wants.pods or wants.window) and facts.metrics_unavailable:
        return _metrics_unavailable(spec, status, facts)
    if wants.pods:
        if facts.pods_applied:
            verdict = f"step {step} at {status.candidate_weight}%: analysing"
            started = status.model_copy(update={"window_start": now, "last_verdict": verdict})
            return Decision(started, [], step_seconds(spec))
        verdict = f"waiting for every ready pod to apply {status.candidate_weight}%"
        return Decision(status.model_copy(update={"last_verdict": verdict}), [], POLL_SECONDS)
    if wants.window is not None:
        if facts.readings is None:
            return Decision(status, [], POLL_SECONDS)
        return _analyse(spec, status, name, facts)
    due = (status.window_start or now) + timedelta(seconds=step_seconds(spec))
    return Decision(status, [], max((due - now).total_seconds(), 0.5))


def _paused(spec: ExperimentSpec, status: ExperimentStatus, facts: Facts) -> Decision:
    if status.paused_reason == "PausedByUser":
        if facts.pause_requested:
            return Decision(status)
        why = "resumed by request"
    else:  # MetricsUnavailable: resumes by itself once the metrics source answers
        if facts.pause_requested:
            paused = status.model_copy(update={"paused_reason": "PausedByUser"})
            return Decision(paused, [Event("Normal", "Paused", "paused by request")])
        if facts.metrics_unavailable is not None or facts.readings is None:
            return Decision(status, [], POLL_SECONDS)
        why = "the metrics source answers again"
    step = (status.current_step or 0) + 1
    message = f"{why}; step {step} at {status.candidate_weight}% is analysed afresh"
    resumed = status.model_copy(
        update={
            "phase": "Progressing",
            "paused_reason": None,
            "window_start": None,  # a window that spans the pause proves nothing
            "last_verdict": "resumed",
        }
    )
    return Decision(resumed, [Event("Normal", "Resumed", message)], POLL_SECONDS)
