"""`rtml experiment`: the status table, and the annotations the steering commands write (with a
fake in place of the API server)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from rtml import experiment_cli
from rtml.api.experiment import ABORT_ANNOTATION, PAUSE_ANNOTATION
from rtml.cli import main
from rtml.experiment_cli import format_analysis, format_status, format_table

pytestmark = pytest.mark.unit


def _experiment(status: dict[str, Any] | None = None, **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "rtml.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "fraud-v2", "namespace": "ml", "annotations": annotations},
        "spec": {"modelRef": "fraud", "strategy": "canary",
                 "candidate": {"version": "v2", "artifact": {"uri": "s3://b/m"}},
                 "canary": {"steps": [5, 25, 50, 100]}},
        "status": status,
    }  # fmt: skip


HISTORY = [
    {"time": "2026-11-27T12:01:00Z", "metric": "p99LatencyMs", "value": 23.456, "max": 50,
     "passed": True},
    {"time": "2026-11-27T12:01:00Z", "metric": "errorRate", "value": 0.0123, "max": 0.01,
     "passed": False},
    {"time": "2026-11-27T12:02:00Z", "metric": "scoreMeanShift", "value": None, "max": 0.1,
     "passed": False},
]  # fmt: skip


def test_format_table_aligns_columns_and_right_aligns_numbers() -> None:
    table = format_table(("A", "NUM"), [("long cell", "1"), ("x", "1234")], right={1})
    assert table.splitlines() == ["A           NUM", "long cell     1", "x          1234"]


def test_status_prints_progress_and_the_analysis_history() -> None:
    text = format_status(_experiment({
        "phase": "Progressing", "currentStep": 1, "candidateWeight": 25,
        "lastVerdict": "step 1 failed: errorRate 0.0123 > 0.01", "analysis": HISTORY,
    }, **{PAUSE_ANNOTATION: "true"}))  # fmt: skip
    assert text.splitlines() == [
        "Experiment fraud-v2 in namespace ml: canary of Model fraud, candidate v2",
        "phase:        Progressing",
        "step:         2 of 4",
        "weight:       25%",
        "last verdict: step 1 failed: errorRate 0.0123 > 0.01",
        "requested:    rtml.dev/pause=true",
        "",
        "TIME                  METRIC           VALUE   MAX  PASSED",
        "2026-11-27T12:01:00Z  p99LatencyMs     23.46    50  yes",
        "2026-11-27T12:01:00Z  errorRate       0.0123  0.01  no",
        "2026-11-27T12:02:00Z  scoreMeanShift       -   0.1  no",
    ]


def test_status_of_a_new_experiment() -> None:
    text = format_status(_experiment(None))
    assert "phase:        Pending" in text
    assert "step:         -" in text
    assert text.endswith("\n\nno analysis yet")
    assert format_analysis([]) == "no analysis yet"


class FakeExperiments:
    objects: dict[str, dict[str, Any]] = {}
    patches: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, kubeconfig: str | None, namespace: str | None) -> None:
        self.namespace = namespace or "default"

    def get(self, name: str) -> dict[str, Any]:
        return self.objects[name]

    def annotate(self, name: str, annotations: dict[str, str | None]) -> dict[str, Any]:
        self.patches.append((name, annotations))
        return self.objects[name]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeExperiments]:
    FakeExperiments.objects = {
        "running": _experiment({"phase": "Progressing"}),
        "done": _experiment({"phase": "Promoted"}),
    }
    FakeExperiments.patches = []
    monkeypatch.setattr(experiment_cli, "Experiments", FakeExperiments)
    return FakeExperiments


@pytest.mark.parametrize(
    ("verb", "annotations"),
    [
        ("pause", {PAUSE_ANNOTATION: "true"}),
        ("resume", {PAUSE_ANNOTATION: None}),
        ("abort", {ABORT_ANNOTATION: "true"}),
    ],
)
def test_steering_writes_one_annotation(
    fake: type[FakeExperiments], verb: str, annotations: dict[str, str | None]
) -> None:
    out = CliRunner().invoke(main, ["experiment", verb, "running", "-n", "ml"])
    assert out.exit_code == 0, out.output
    assert fake.patches == [("running", annotations)]
    assert f"Experiment running in namespace ml: {verb} requested" in out.output


def test_an_ended_experiment_cannot_be_paused_or_aborted(fake: type[FakeExperiments]) -> None:
    out = CliRunner().invoke(main, ["experiment", "abort", "done", "-n", "ml"])
    assert out.exit_code == 1
    assert "already ended (Promoted); there is nothing to abort" in out.output
    assert fake.patches == []


def test_status_command_prints_the_formatted_status(fake: type[FakeExperiments]) -> None:
    out = CliRunner().invoke(main, ["experiment", "status", "running"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("Experiment fraud-v2 in namespace ml: canary")


STATUS_JSON_KEYS = {
    "name", "namespace", "strategy", "model", "candidate", "phase", "step", "steps", "weight",
    "last_verdict", "paused_reason", "requested", "analysis",
}  # fmt: skip


def test_status_json_is_one_document_with_the_table_s_facts(fake: type[FakeExperiments]) -> None:
    fake.objects["running"] = _experiment({
        "phase": "Paused", "currentStep": 1, "candidateWeight": 25, "pausedReason": "asked",
        "lastVerdict": "step 1 failed: errorRate 0.0123 > 0.01", "analysis": HISTORY,
    }, **{PAUSE_ANNOTATION: "true"})  # fmt: skip
    out = CliRunner().invoke(main, ["experiment", "status", "running", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert set(doc) == STATUS_JSON_KEYS
    assert doc["name"] == "fraud-v2"
    assert doc["model"] == "fraud"
    assert doc["candidate"] == "v2"
    assert (doc["phase"], doc["step"], doc["steps"], doc["weight"]) == ("Paused", 2, 4, 25)
    assert doc["paused_reason"] == "asked"
    assert doc["requested"] == [PAUSE_ANNOTATION]
    assert doc["analysis"][1] == {"time": "2026-11-27T12:01:00Z", "metric": "errorRate",
                                  "value": 0.0123, "max": 0.01, "passed": False}  # fmt: skip
    assert doc["analysis"][2]["value"] is None


def test_status_json_of_a_new_experiment_uses_null(fake: type[FakeExperiments]) -> None:
    fake.objects["new"] = _experiment(None)
    out = CliRunner().invoke(main, ["experiment", "status", "new", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["phase"] == "Pending"
    assert doc["step"] is None
    assert doc["weight"] is None
    assert doc["last_verdict"] is None
    assert doc["requested"] == []
    assert doc["analysis"] == []


def test_status_help_documents_every_json_key() -> None:
    text = CliRunner().invoke(main, ["experiment", "status", "--help"]).output
    for key in STATUS_JSON_KEYS:
        assert key in text, key
