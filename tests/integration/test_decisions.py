"""Fraud decisions through `rtml serve` as a process, features from a real Redis, real ONNX
models from examples/fraud/build.py, audit records in a second real Redis (docs/decisions.md).

- a high-severity rule blocks and no model is called (rtml_model_calls_total stands still);
- one of two models stalled (slow.onnx, ~50 ms a row, late beyond spec.ensemble.timeoutMs):
  the other's score, `degraded: true`; both failing (erroring.onnx raises on an amount over 10,
  beside the stalled one): the conservative decision;
- every answer has its audit record, equal in content, and alerts at or above alertAt;
- the audit Redis stopped (SIGSTOP): answers go on, and the records lost are counted.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rtml_runtime.audit import inputs_digest
from tests.runtime_proc import REPO, RedisServer, RuntimeProcess, write_manifest

pytestmark = [pytest.mark.runtime, pytest.mark.redis, pytest.mark.feast]
REQUEST = json.loads((REPO / "examples/fraud/request.json").read_text())
ENTITY = REQUEST["entity_id"]
SLO = {"p99LatencyMs": 50, "timeoutMs": 5000, "featureBudgetMs": 1000}
HIGH = {
    "name": "huge-amount",
    "expression": "request.amount > 10000.0",
    "severity": "high",
    "reason": "amount over 10,000",
}
NIGHT = {
    "name": "night-spend",
    "expression": "request.hour_of_day < 5.0 && request.amount > 500.0",
    "severity": "medium",
    "reason": "large night-time spend",
}
CONSERVATIVE = {"action": "review", "riskLevel": "high", "reason": "models unavailable"}
AUDIT_STREAM = "fraud:audit"
ALERT_STREAM = "fraud:alerts"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def member(build: Path, name: str, file: str) -> dict[str, Any]:
    path = build / file
    return {"name": name, "artifact": {"uri": f"file://{path}", "sha256": sha256(path)}}


def body(amount: float, hour: int = 14, merchant_risk: float = 0.3) -> dict[str, Any]:
    features = {"amount": amount, "merchant_risk": merchant_risk, "hour_of_day": hour}
    return {"entity_id": ENTITY, "features": features}


def predict(proc: RuntimeProcess, payload: dict[str, Any]) -> dict[str, Any]:
    status, answer, _ = proc.post("/predict", payload)
    assert status == 200, answer
    return answer


def calls(proc: RuntimeProcess, member: str, outcome: str = "ok") -> float:
    return proc.metric("rtml_model_calls_total", member=member, outcome=outcome) or 0.0


@pytest.fixture(scope="module")
def audit_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of its own for audit records, so stopping it stalls nothing but the audit."""
    server = RedisServer(tmp_path_factory.mktemp("audit-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def detector(
    fraud_build: Path,
    redis_server: RedisServer,
    audit_redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RuntimeProcess]:
    """The primary model and a second tree model, two rules, thresholds and an audit stream."""
    manifest = write_manifest(
        fraud_build,
        tmp_path_factory.mktemp("detector"),
        slo=SLO,
        rules=[HIGH, NIGHT],
        ensemble={"models": [member(fraud_build, "trees", "candidate.onnx")], "weight": 1.0},
        decision={
            "thresholds": [
                {"minScore": 0.3, "action": "review", "riskLevel": "medium", "reason": "elevated"},
                {"minScore": 0.7, "action": "block", "riskLevel": "high", "reason": "high risk"},
            ],
            "conservative": CONSERVATIVE,
        },
        audit={"stream": AUDIT_STREAM, "alertStream": ALERT_STREAM, "alertAt": "review"},
    )
    env = {"RTML_AUDIT_REDIS_URL": audit_redis.url, "RTML_AUDIT_QUEUE": "64"}
    proc = RuntimeProcess(manifest, redis_server.url, env=env)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def stalling(
    fraud_build: Path, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeProcess]:
    """Primary erroring.onnx (fails on an amount over 10) beside slow.onnx, late at 5 ms."""
    manifest = write_manifest(
        fraud_build,
        tmp_path_factory.mktemp("stalling"),
        slo=SLO,
        warmup={"requests": 3},  # slow.onnx's rows cost ~50 ms each
        ensemble={"models": [member(fraud_build, "slow", "slow.onnx")], "timeoutMs": 5},
        decision={"conservative": CONSERVATIVE},
    )
    erroring = fraud_build / "erroring.onnx"
    text = manifest.read_text().replace(
        f"file://{fraud_build / 'model.onnx'}", f"file://{erroring}"
    )
    text = text.replace(
        (fraud_build / "model.onnx.sha256").read_text().split()[0], sha256(erroring)
    )
    manifest.write_text(text)
    proc = RuntimeProcess(manifest, redis_server.url)
    proc.start()
    yield proc
    proc.stop()


def test_a_high_risk_rule_blocks_without_calling_a_model(detector: RuntimeProcess) -> None:
    before = {m: calls(detector, m) for m in ("primary", "trees")}
    answer = predict(detector, body(25_000.0))
    assert (answer["decision"], answer["riskLevel"], answer["score"]) == ("block", "high", None)
    assert answer["reasons"] == ["amount over 10,000"]
    assert (answer["ruleHits"], answer["modelScores"]) == (["huge-amount"], {})
    assert {m: calls(detector, m) for m in ("primary", "trees")} == before
    assert detector.metric("rtml_rule_hits_total", rule="huge-amount", severity="high") == 1
    # The same card with an ordinary amount is scored by both models.
    scored = predict(detector, body(40.0))
    assert set(scored["modelScores"]) == {"primary", "trees"}
    assert calls(detector, "primary") == before["primary"] + 1
    assert calls(detector, "trees") == before["trees"] + 1
    mean = (scored["modelScores"]["primary"] + scored["modelScores"]["trees"]) / 2
    assert scored["score"] == pytest.approx(mean, rel=1e-9)
    assert scored["degraded"] is False


def test_a_medium_rule_raises_the_decision_to_review(detector: RuntimeProcess) -> None:
    answer = predict(detector, body(900.0, hour=3))
    assert answer["ruleHits"] == ["night-spend"]
    assert answer["decision"] in ("review", "block")
    assert "large night-time spend" in answer["reasons"]
    assert answer["score"] is not None


def stream(audit: RedisServer, key: str) -> dict[str, dict[str, str]]:
    client = redis.Redis(port=audit.port, decode_responses=True)
    try:
        entries = client.xrange(key)
    finally:
        client.close()
    return {fields["requestId"]: fields for _, fields in entries}


def wait_for_records(audit: RedisServer, ids: set[str], limit_s: float = 30) -> None:
    deadline = time.monotonic() + limit_s
    while not ids <= set(stream(audit, AUDIT_STREAM)) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_every_answer_has_its_audit_record(
    detector: RuntimeProcess, audit_redis: RedisServer
) -> None:
    payloads = [body(a, hour=h) for a, h in [(12.0, 10), (900.0, 2), (30_000.0, 12), (75.5, 23)]]
    payloads += [body(10.0 + 37.0 * i, hour=i % 24, merchant_risk=i / 20) for i in range(16)]
    answers = [predict(detector, p) for p in payloads]
    ids = {a["requestId"] for a in answers}
    assert len(ids) == len(answers)
    wait_for_records(audit_redis, ids)
    records = stream(audit_redis, AUDIT_STREAM)
    assert ids <= set(records)
    for p, a in zip(payloads, answers, strict=True):
        r = records[a["requestId"]]
        assert (r["model"], r["version"], r["variant"]) == ("fraud", a["version"], a["variant"])
        assert (r["decision"], r["riskLevel"]) == (a["decision"], a["riskLevel"])
        assert json.loads(r["reasons"]) == a["reasons"]
        assert json.loads(r["ruleHits"]) == a["ruleHits"]
        assert json.loads(r["modelScores"]) == a["modelScores"]
        assert json.loads(r["score"]) == a["score"]
        assert json.loads(r["degraded"]) == a["degraded"]
        inputs = {"card_id": ENTITY, "features": p["features"]}
        assert r["inputsSha256"] == inputs_digest(inputs)
        assert "inputs" not in r  # includeInputs is false: no raw values
    # Every record, and only those, of a decision at or above review is also an alert.
    alerts = stream(audit_redis, ALERT_STREAM)
    alerted = {a["requestId"] for a in answers if a["decision"] in ("review", "block")}
    assert alerted
    assert alerted <= set(alerts)
    assert not ({a["requestId"] for a in answers} - alerted) & set(alerts)


def test_a_stalled_audit_stream_neither_fails_nor_blocks_answers(
    detector: RuntimeProcess, audit_redis: RedisServer
) -> None:
    lost_before = (detector.metric("rtml_audit_records_total", outcome="dropped") or 0) + (
        detector.metric("rtml_audit_records_total", outcome="failed") or 0
    )
    audit_redis.pause()
    try:
        # More answers than the queue holds (RTML_AUDIT_QUEUE=64) while the stream is stopped.
        answers = [predict(detector, body(20.0 + i)) for i in range(200)]
    finally:
        audit_redis.resume()
    assert all(a["decision"] for a in answers)
    lost = (detector.metric("rtml_audit_records_total", outcome="dropped") or 0) + (
        detector.metric("rtml_audit_records_total", outcome="failed") or 0
    )
    assert lost > lost_before
    # Once the stream is back, records are written again.
    after = predict(detector, body(33.0))
    wait_for_records(audit_redis, {after["requestId"]})
    assert after["requestId"] in stream(audit_redis, AUDIT_STREAM)


def test_one_model_stalled_answers_the_others_score_degraded(stalling: RuntimeProcess) -> None:
    for _ in range(3):
        answer = predict(stalling, body(8.0))  # erroring.onnx scores amounts up to 10
        assert answer["modelScores"]["slow"] is None
        assert answer["modelScores"]["primary"] is not None
        assert answer["score"] == answer["modelScores"]["primary"]
        assert answer["degraded"] is True
        assert answer["decision"] in ("approve", "review", "block")
    assert calls(stalling, "slow", "late") + calls(stalling, "slow", "open") >= 3


def test_both_models_failing_answer_the_conservative_decision(stalling: RuntimeProcess) -> None:
    answer = predict(stalling, body(250.0))  # erroring.onnx raises, slow.onnx is late
    assert answer["modelScores"] == {"primary": None, "slow": None}
    assert (answer["decision"], answer["riskLevel"]) == ("review", "high")
    assert answer["reasons"] == ["models unavailable"]
    assert answer["score"] is None
    assert answer["degraded"] is True
    assert calls(stalling, "primary", "error") >= 1
