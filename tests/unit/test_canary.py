"""The Experiment state machine (rtml.operator.canary) with a fake clock and a fake metrics source:
every transition, inconclusive answers, minRequests waits, failureLimit, restarts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rtml.api.experiment import ExperimentSpec, ExperimentStatus
from rtml.operator.canary import (
    INCONCLUSIVE_INTERVALS,
    Decision,
    Facts,
    decide,
    needs,
    traffic_plan,
)

pytestmark = pytest.mark.unit
T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
NAME = "fraud-v2"


def spec(**over: Any) -> ExperimentSpec:
    body: dict[str, Any] = {
        "modelRef": "fraud",
        "candidate": {
            "version": "v2",
            "artifact": {"uri": "file:///m/v2.onnx", "sha256": "b" * 64},
        },
        "strategy": "canary",
        "canary": {"steps": [10, 50, 100], "stepInterval": "1m"},
        "analysis": {
            "metrics": [{"name": "p99LatencyMs", "max": 50}, {"name": "errorRate", "max": 0.01}],
            "minRequests": 100,
            "failureLimit": 1,
        },
    }
    body.update(over)
    return ExperimentSpec.model_validate(body)


@dataclass
class FakeSource:
    """Readings the fake Prometheus gives; `down` makes every query fail."""

    readings: dict[str, float | None] = field(
        default_factory=lambda: {"requests": 500.0, "p99LatencyMs": 12.0, "errorRate": 0.0}
    )
    pods_applied: bool = True
    down: bool = False
    queries: int = 0


@dataclass
class Shell:
    """What rtml.operator.experiment does each tick, minus the API server."""

    spec: ExperimentSpec
    source: FakeSource = field(default_factory=FakeSource)
    now: datetime = T0
    status: ExperimentStatus | None = None
    generation: int = 1
    pause: bool = False
    abort: bool = False
    blocked: tuple[str, str] | None = None
    events: list[str] = field(default_factory=list)

    def tick(self) -> Decision:
        wants = needs(self.spec, self.status, self.now)
        facts: dict[str, Any] = {
            "now": self.now,
            "generation": self.generation,
            "pause_requested": self.pause,
            "abort_requested": self.abort,
            "blocked": self.blocked,
        }
        if wants.pods or wants.window or wants.probe:
            self.source.queries += 1
            if self.source.down:
                facts["metrics_unavailable"] = "Prometheus at http://p:9090 refused the connection"
            elif wants.pods:
                facts["pods_applied"] = self.source.pods_applied
            elif wants.window:
                facts["readings"] = dict(self.source.readings)
            else:
                facts["readings"] = {}
        d = decide(NAME, self.spec, self.status, Facts(**facts))
        self.status = d.status
        self.events += [e.reason for e in d.events]
        return d

    def advance(self, seconds: float) -> Decision:
        self.now += timedelta(seconds=seconds)
        return self.tick()

    @property
    def st(self) -> ExperimentStatus:
        assert self.status is not None
        return self.status

    @property
    def phase(self) -> str | None:
        return self.status.phase if self.status else None


def through_step(shell: Shell) -> Decision:
    """Pods apply the weight, the window runs its minute, the analysis decides."""
    shell.tick()  # pods applied -> window starts
    return shell.advance(60)


def test_a_good_candidate_is_promoted_through_every_step() -> None:
    shell = Shell(spec(onSuccess="promote"))
    d = shell.tick()
    assert (shell.phase, d.weight, shell.st.current_step) == ("Progressing", 10, 0)
    weights = []
    for _ in range(3):
        weights.append(shell.st.candidate_weight)
        through_step(shell)
    assert weights == [10, 50, 100]
    assert shell.phase == "Promoted"
    assert shell.st.candidate_weight == 0
    assert shell.st.finished_at == shell.now
    assert shell.events == ["Started", "StepPassed", "StepPassed", "Promoted"]
    assert len(shell.st.analysis) == 6
    assert all(r.passed for r in shell.st.analysis)


def test_keep_completes_with_traffic_back_on_the_champion() -> None:
    shell = Shell(spec(canary={"steps": [50], "stepInterval": "30s"}))
    shell.tick()
    shell.tick()
    shell.advance(30)
    assert shell.phase == "Completed"
    assert shell.st.candidate_weight == 0
    assert not traffic_plan(NAME, shell.spec, shell.status).active


def test_the_window_starts_only_when_every_pod_applies_the_weight() -> None:
    shell = Shell(spec())
    shell.source.pods_applied = False
    shell.tick()
    shell.tick()
    assert shell.st.window_start is None
    assert "waiting for every ready pod" in (shell.st.last_verdict or "")
    shell.advance(120)  # time passes, but no analysis without the weight applied
    assert shell.st.window_start is None
    assert shell.st.current_step == 0
    shell.source.pods_applied = True
    shell.advance(1)
    assert shell.st.window_start == shell.now
    d = shell.advance(30)
    assert d.requeue_seconds == pytest.approx(30)  # not due yet: sleeps until the window ends


def test_a_slow_candidate_is_rolled_back_with_the_measured_value() -> None:
    shell = Shell(spec())
    shell.tick()
    shell.source.readings["p99LatencyMs"] = 83.25
    d = through_step(shell)
    assert shell.phase == "RolledBack"
    assert d.weight == 0
    failed = [r for r in shell.st.analysis if not r.passed]
    assert [(r.metric, r.value, r.max) for r in failed] == [("p99LatencyMs", 83.25, 50)]
    assert "p99LatencyMs 83.25 (max 50)" in d.events[0].message
    assert d.events[0].type == "Warning"
    assert d.events[0].reason == "RolledBack"


def test_failure_limit_allows_that_many_failed_analyses() -> None:
    shell = Shell(
        spec(analysis={"metrics": [{"name": "errorRate", "max": 0.01}], "failureLimit": 3})
    )
    shell.tick()
    shell.source.readings["errorRate"] = 0.2
    through_step(shell)
    assert shell.phase == "Progressing"
    assert shell.st.failed_analyses == 1
    assert shell.events[-1] == "AnalysisFailed"
    assert shell.st.candidate_weight == 10
    shell.advance(60)  # the step is analysed again over a fresh window
    assert shell.st.failed_analyses == 2
    assert shell.phase == "Progressing"
    shell.advance(60)
    assert shell.phase == "RolledBack"
    assert shell.st.failed_analyses == 3


def test_fewer_than_min_requests_waits_instead_of_deciding() -> None:
    shell = Shell(spec())
    shell.tick()
    shell.source.readings["requests"] = 40
    through_step(shell)
    assert shell.phase == "Progressing"
    assert shell.st.current_step == 0
    assert shell.st.last_verdict == "waiting: 40 of 100 candidate requests"
    shell.source.readings["requests"] = 140
    shell.advance(5)
    assert shell.st.current_step == 1
    assert shell.st.candidate_weight == 50


def test_an_inconclusive_answer_is_never_a_pass() -> None:
    shell = Shell(spec())
    shell.tick()
    shell.source.readings["p99LatencyMs"] = None  # an empty vector or NaN
    through_step(shell)
    assert shell.phase == "Progressing"
    assert shell.st.current_step == 0
    assert "inconclusive" in (shell.st.last_verdict or "")
    # Still nothing after INCONCLUSIVE_INTERVALS intervals: the step fails (fail closed).
    shell.advance(60 * INCONCLUSIVE_INTERVALS)
    assert shell.phase == "RolledBack"
    assert "no conclusive data" in (shell.st.last_verdict or "")


def test_starved_of_requests_for_too_long_fails_the_step() -> None:
    shell = Shell(spec())
    shell.tick()
    shell.source.readings["requests"] = 3
    through_step(shell)
    shell.advance(60 * INCONCLUSIVE_INTERVALS)
    assert shell.phase == "RolledBack"
    assert "only 3 candidate requests" in (shell.st.last_verdict or "")


def test_metrics_unavailable_pauses_then_resumes_with_a_fresh_window() -> None:
    shell = Shell(spec())
    shell.tick()
    shell.tick()
    shell.source.down = True
    shell.advance(60)
    assert shell.phase == "Paused"
    assert shell.st.paused_reason == "MetricsUnavailable"
    assert shell.st.candidate_weight == 10  # held, never promoted
    shell.advance(600)
    assert shell.phase == "Paused"
    assert shell.st.current_step == 0
    shell.source.down = False
    shell.advance(2)
    assert shell.phase == "Progressing"
    assert shell.st.window_start is None
    assert shell.events[-1] == "Resumed"
    through_step(shell)
    assert shell.st.current_step == 1


def test_metrics_unavailable_rolls_back_when_so_configured() -> None:
    shell = Shell(spec(analysis={"onMetricsUnavailable": "rollback"}))
    shell.tick()
    shell.source.down = True
    shell.tick()  # even the pods check needs Prometheus
    assert shell.phase == "RolledBack"
    assert shell.st.candidate_weight == 0


def test_pause_and_resume_by_request_keep_the_weight() -> None:
    shell = Shell(spec())
    shell.tick()
    through_step(shell)
    shell.pause = True
    shell.tick()
    assert shell.phase == "Paused"
    assert shell.st.candidate_weight == 50
    shell.advance(600)
    assert shell.phase == "Paused"
    assert shell.st.current_step == 1
    shell.pause = False
    shell.tick()
    assert shell.phase == "Progressing"
    assert shell.st.candidate_weight == 50


def test_abort_sends_traffic_back_from_any_running_phase() -> None:
    for pause in (False, True):
        shell = Shell(spec())
        shell.tick()
        shell.pause = pause
        shell.tick()
        shell.abort = True
        d = shell.tick()
        assert shell.phase == "Aborted"
        assert d.weight == 0


def test_a_second_experiment_waits_in_pending_with_the_reason() -> None:
    shell = Shell(spec(), blocked=("ModelBusy", "Experiment other runs on Model fraud"))
    d = shell.tick()
    assert shell.phase == "Pending"
    assert d.weight == 0
    assert shell.events == ["ModelBusy"]
    shell.tick()
    assert shell.events == ["ModelBusy"]  # said once, not every tick
    shell.blocked = None
    shell.tick()
    assert shell.phase == "Progressing"


def test_a_changed_spec_restarts_from_the_first_step() -> None:
    shell = Shell(spec())
    shell.tick()
    through_step(shell)
    assert shell.st.candidate_weight == 50
    shell.generation = 2
    shell.spec = spec(
        candidate={"version": "v3", "artifact": {"uri": "file:///m/v3.onnx", "sha256": "c" * 64}}
    )
    shell.tick()
    assert shell.st.current_step == 0
    assert shell.st.candidate_weight == 10
    assert shell.st.analysis == []
    assert shell.events[-1] == "Restarted"


def test_a_restarted_operator_resumes_at_the_same_step_and_weight() -> None:
    shell = Shell(spec())
    shell.tick()
    through_step(shell)
    shell.tick()
    saved = ExperimentStatus.model_validate(shell.st.model_dump(mode="json", by_alias=True))
    again = Shell(spec(), status=saved, now=shell.now)  # a new process, the status read back
    d = again.advance(1)
    assert (again.st.current_step, d.weight) == (1, 50)
    assert again.st.window_start == shell.st.window_start


def test_final_phases_do_nothing() -> None:
    shell = Shell(spec())
    shell.tick()
    shell.abort = True
    shell.tick()
    before = shell.status
    shell.advance(3600)
    assert shell.status == before


def test_a_spec_changed_after_the_end_is_observed_and_changes_nothing_else() -> None:
    shell = Shell(spec())
    shell.tick()
    shell.abort = True
    shell.tick()
    ended = shell.st
    shell.generation = 2
    shell.spec = spec(
        candidate={"version": "v3", "artifact": {"uri": "file:///m/v3.onnx", "sha256": "c" * 64}}
    )
    d = shell.advance(60)
    assert d.events == []
    assert shell.st.observed_generation == 2  # kstatus: not In Progress forever
    assert shell.st.model_copy(update={"observed_generation": 1}) == ended


def test_abtest_is_one_step_over_its_duration() -> None:
    shell = Shell(spec(strategy="abtest", abtest={"candidateWeight": 30, "duration": "10m"}))
    shell.tick()
    assert shell.st.candidate_weight == 30
    shell.tick()
    shell.advance(300)
    assert shell.phase == "Progressing"
    shell.advance(300)
    assert shell.phase == "Completed"


def test_shadow_plans_sample_without_answering() -> None:
    shell = Shell(spec(strategy="shadow", shadow={"sampleRate": 100}))
    shell.tick()
    plan = traffic_plan(NAME, shell.spec, shell.status)
    assert (plan.weight, plan.shadow_sample_rate) == (0, 100)
    assert plan.revision
    assert shell.st.traffic_revision == plan.revision


def test_the_revision_changes_with_the_weight() -> None:
    shell = Shell(spec())
    shell.tick()
    first = shell.st.traffic_revision
    through_step(shell)
    assert shell.st.traffic_revision not in (None, first)
    assert traffic_plan(NAME, shell.spec, shell.status).revision == shell.st.traffic_revision


def test_history_keeps_the_last_twenty_results() -> None:
    shell = Shell(spec(canary={"steps": list(range(1, 16))}))
    shell.tick()
    for _ in range(15):
        through_step(shell)
    assert len(shell.st.analysis) == 20
    assert shell.st.analysis[-1].time == shell.now
