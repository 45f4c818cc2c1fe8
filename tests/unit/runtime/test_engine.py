"""The data plane with a real ONNX Runtime session and scripted feature readers."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from rtml.api.featureview import FeatureView
from rtml.api.model import Model
from rtml.contract import RuntimeSettings
from rtml_runtime.config import RuntimeConfig
from rtml_runtime.engine import Runtime, report_termination_reason
from rtml_runtime.errors import RequestError
from rtml_runtime.v2codec import from_json
from tests.clock import FakeClock
from tests.unit.runtime.onnx_fixtures import write_sum_model

pytestmark = pytest.mark.unit
VIEW = FeatureView.model_validate(
    {
        "metadata": {"name": "cards"},
        "spec": {
            "entity": {"name": "card", "joinKey": "card_id"},
            "features": [
                {"name": "a", "dtype": "FLOAT", "default": 0.0},
                {"name": "b", "dtype": "FLOAT", "default": 1.0},
            ],
            "source": {"type": "push"},
        },
    }
)


class DictReader:
    """Feature reads answered from a dict; `fail` makes them raise, `delay_s` makes them late."""

    def __init__(self, rows: dict[str, dict[str, Any]]) -> None:
        self.rows = rows
        self.fail = False
        self.delay_s = 0.0
        self.calls = 0

    async def read(self, entity_id: str) -> dict[str, Any] | None:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            raise ConnectionError("store down")
        return self.rows.get(entity_id)

    async def close(self) -> None:
        return None


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_runtime(
    tmp_path: Path, clock: FakeClock | None = None, cache: int = 0, **spec: Any
) -> tuple[Runtime, DictReader]:
    path = write_sum_model(tmp_path / "m.onnx", ["a", "b", "amount"])
    body: dict[str, Any] = {
        "version": "v1",
        "artifact": {"uri": f"file://{path}", "sha256": digest(path)},
        "features": {"featureViewRef": "cards", "requestFeatures": ["amount"]},
        "warmup": {"requests": 3},
        "circuitBreaker": {
            "windowSize": 4,
            "minimumCalls": 4,
            "openDuration": "10s",
            "halfOpenCalls": 2,
        },
    }
    body.update(spec)
    model = Model.model_validate({"metadata": {"name": "fraud"}, "spec": body})
    config = RuntimeConfig(
        model=model,
        feature_view=VIEW,
        base_dir=tmp_path,
        settings=RuntimeSettings.model_construct(
            cache_entries=cache, artifact_dir=tmp_path / "art"
        ),
    )
    runtime = Runtime(config, clock=clock or FakeClock())
    reader = DictReader({"c1": {"a": 1.0, "b": 2.0}})
    asyncio.run(runtime.start(reader))
    assert runtime.ready, runtime.not_ready_reason
    reader.calls = 0  # the warm-up's reads
    return runtime, reader


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_scores_with_stored_and_request_features(tmp_path: Path) -> None:
    rt, _ = make_runtime(tmp_path)
    out = asyncio.run(rt.predict({"card_id": "c1", "features": {"amount": 0.5}}))
    assert out["score"] == pytest.approx(sigmoid(3.5), rel=1e-6)
    assert out["degraded"] is False
    assert (out["model"], out["version"], out["variant"]) == ("fraud", "v1", "champion")


def test_missing_entity_uses_defaults_and_is_degraded(tmp_path: Path) -> None:
    rt, _ = make_runtime(tmp_path)
    out = asyncio.run(rt.predict({"card_id": "nobody", "features": {"amount": 0.5}}))
    assert out["score"] == pytest.approx(sigmoid(1.5), rel=1e-6)
    assert out["degraded"] is True


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"features": {"amount": 1}}, "card_id"),
        ({"card_id": "c1", "features": {"amount": "x"}}, "features.amount"),
        ({"card_id": "c1", "features": {"amount": 1, "zzz": 2}}, "features.zzz"),
        ({"card_id": "c1", "features": {}}, "features.amount"),
        ({"card_id": "c1", "features": {"amount": float("nan")}}, "features.amount"),
        ({"card_id": ["c1"], "features": {"amount": 1}}, "card_id"),
        ({"card_id": "c1", "features": [1]}, "features"),
    ],
)
def test_bad_inputs_name_the_field(tmp_path: Path, payload: dict, field: str) -> None:
    rt, _ = make_runtime(tmp_path)
    with pytest.raises(RequestError) as err:
        asyncio.run(rt.predict(payload))
    assert err.value.status == 400
    assert err.value.field == field


def test_feature_failures_open_the_breaker_and_fallback_serves(tmp_path: Path) -> None:
    clock = FakeClock()
    rt, reader = make_runtime(tmp_path, clock, fallback={"mode": "static", "value": 0.25})
    reader.fail = True
    for _ in range(4):
        out = asyncio.run(rt.predict({"card_id": "c1", "features": {"amount": 1}}))
        assert (out["score"], out["degraded"]) == (0.25, True)
    assert rt.feature_breaker.state.name == "OPEN"
    calls = reader.calls
    asyncio.run(rt.predict({"card_id": "c1", "features": {"amount": 1}}))
    assert reader.calls == calls  # open: the store is not called at all
    reader.fail = False
    clock.advance(10)
    for _ in range(2):  # half-open probes succeed
        out = asyncio.run(rt.predict({"card_id": "c1", "features": {"amount": 1}}))
        assert out["degraded"] is False
    assert rt.feature_breaker.state.name == "CLOSED"


def test_reject_mode_answers_503_with_retry_after(tmp_path: Path) -> None:
    rt, reader = make_runtime(tmp_path)
    reader.fail = True
    with pytest.raises(RequestError) as err:
        asyncio.run(rt.predict({"card_id": "c1", "features": {"amount": 1}}))
    assert err.value.status == 503
    assert err.value.retry_after_s is not None


def test_default_features_fallback_scores_with_defaults(tmp_path: Path) -> None:
    rt, reader = make_runtime(tmp_path, fallback={"mode": "defaultFeatures"})
    reader.fail = True
    out = asyncio.run(rt.predict({"card_id": "c1", "features": {"amount": 0.5}}))
    assert out["score"] == pytest.approx(sigmoid(1.5), rel=1e-6)
    assert out["degraded"] is True


def test_late_feature_read_falls_back_within_budget(tmp_path: Path) -> None:
    rt, reader = make_runtime(
        tmp_path,
        fallback={"mode": "static", "value": 0.5},
        slo={"featureBudgetMs": 20, "timeoutMs": 100, "p99LatencyMs": 50},
    )
    reader.delay_s = 0.5
    out = asyncio.run(rt.predict({"card_id": "c1", "features": {"amount": 1}}))
    assert out["degraded"] is True
    assert out["latency_ms"] < 400  # the 0.5 s read was abandoned, not awaited


def test_backup_model_fallback(tmp_path: Path) -> None:
    backup = write_sum_model(tmp_path / "backup.onnx", ["amount"])
    digest = hashlib.sha256(backup.read_bytes()).hexdigest()
    rt, reader = make_runtime(
        tmp_path,
        fallback={"mode": "model", "artifact": {"uri": f"file://{backup}", "sha256": digest}},
    )
    reader.fail = True
    out = asyncio.run(rt.predict({"card_id": "c1", "features": {"amount": 2.0}}))
    assert out["score"] == pytest.approx(sigmoid(2.0), rel=1e-6)
    assert out["degraded"] is True


def test_rate_limit_429(tmp_path: Path) -> None:
    rt, _ = make_runtime(tmp_path, rateLimit={"requestsPerSecond": 1, "burst": 2})
    statuses = []
    for _ in range(5):
        try:
            asyncio.run(rt.predict({"card_id": "c1", "features": {"amount": 1}}))
            statuses.append(200)
        except RequestError as e:
            statuses.append(e.status)
    assert statuses == [200, 200, 429, 429, 429]


def test_start_opens_the_feature_store_before_ready(tmp_path: Path) -> None:
    path = write_sum_model(tmp_path / "m.onnx", ["a", "b", "amount"])
    model = Model.model_validate(
        {
            "metadata": {"name": "fraud"},
            "spec": {
                "version": "v1",
                "artifact": {"uri": f"file://{path}", "sha256": digest(path)},
                "features": {"featureViewRef": "cards", "requestFeatures": ["amount"]},
                "warmup": {"requests": 1},
            },
        }
    )
    settings = RuntimeSettings.model_construct(cache_entries=0, artifact_dir=tmp_path / "art")
    config = RuntimeConfig(model=model, feature_view=VIEW, base_dir=tmp_path, settings=settings)
    warm = DictReader({})
    rt = Runtime(config, clock=FakeClock())
    asyncio.run(rt.start(warm))
    assert rt.ready
    assert warm.calls == 3
    down = DictReader({})
    down.fail = True
    rt = Runtime(config, clock=FakeClock())
    asyncio.run(rt.start(down))
    assert rt.ready, "a store that is down at start is the breaker's business, not readiness'"
    assert down.calls == 1  # the first failure ends the warm-up


def test_l1_cache_spares_the_store(tmp_path: Path) -> None:
    rt, reader = make_runtime(tmp_path, cache=100)
    for _ in range(5):
        asyncio.run(rt.predict({"card_id": "c1", "features": {"amount": 1}}))
    assert reader.calls == 1


def test_batch_and_v2_infer(tmp_path: Path) -> None:
    rt, _ = make_runtime(tmp_path)
    out = asyncio.run(
        rt.predict_batch(
            {
                "instances": [
                    {"card_id": "c1", "features": {"amount": 0}},
                    {"card_id": "zz", "features": {"amount": 0}},
                ]
            }
        )
    )
    assert [p["degraded"] for p in out["predictions"]] == [False, True]
    v2 = asyncio.run(
        rt.infer_v2(
            "fraud",
            from_json(
                {
                    "inputs": [
                        {"name": "a", "shape": [2, 1], "datatype": "FP32", "data": [1, 0]},
                        {"name": "b", "shape": [2, 1], "datatype": "FP32", "data": [1, 0]},
                        {"name": "amount", "shape": [2, 1], "datatype": "FP32", "data": [1, 0]},
                    ]
                }
            ),
        )
    )
    assert v2["outputs"][0]["data"] == pytest.approx([sigmoid(3), sigmoid(0)], rel=1e-6)


def test_wrong_digest_never_ready(tmp_path: Path) -> None:
    path = write_sum_model(tmp_path / "m.onnx", ["a", "b", "amount"])
    model = Model.model_validate(
        {
            "metadata": {"name": "fraud"},
            "spec": {
                "version": "v1",
                "artifact": {"uri": f"file://{path}", "sha256": "0" * 64},
                "features": {"featureViewRef": "cards", "requestFeatures": ["amount"]},
            },
        }
    )
    rt = Runtime(RuntimeConfig(model=model, feature_view=VIEW, base_dir=tmp_path))
    asyncio.run(rt.start(None))
    assert rt.ready is False
    assert "sha256" in rt.not_ready_reason
    with pytest.raises(RequestError) as err:
        asyncio.run(rt.predict({"card_id": "c1", "features": {"amount": 1}}))
    assert err.value.status == 503


def test_signature_mismatch_never_ready(tmp_path: Path) -> None:
    path = write_sum_model(tmp_path / "m.onnx", ["a", "unknown_input"])
    model = Model.model_validate(
        {
            "metadata": {"name": "fraud"},
            "spec": {
                "version": "v1",
                "artifact": {"uri": f"file://{path}", "sha256": digest(path)},
                "features": {"featureViewRef": "cards"},
            },
        }
    )
    rt = Runtime(RuntimeConfig(model=model, feature_view=VIEW, base_dir=tmp_path))
    asyncio.run(rt.start(None))
    assert rt.ready is False
    assert "unknown_input" in rt.not_ready_reason


def test_an_artifact_without_a_digest_never_loads_unless_it_opts_out(tmp_path: Path) -> None:
    """The API models refuse such a spec; a Model built without validation (model_copy, as
    a canary's champion is) still meets the runtime's own refusal, naming the field."""
    rt, _ = make_runtime(tmp_path)
    art = rt.spec.artifact.model_copy(update={"sha256": None})
    model = rt.config.model.model_copy(
        update={"spec": rt.spec.model_copy(update={"artifact": art})}
    )
    unpinned = Runtime(RuntimeConfig(model=model, feature_view=VIEW, base_dir=tmp_path))
    asyncio.run(unpinned.start(None))
    assert unpinned.ready is False
    assert unpinned.not_ready_reason.startswith("spec.artifact.sha256 is required for every")
    assert "set spec.artifact.allowUnverified: true" in unpinned.not_ready_reason


def test_an_artifact_that_opts_out_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"file://{tmp_path / 'm.onnx'}"  # make_runtime writes it
    with caplog.at_level(logging.WARNING, logger="rtml.runtime"):
        rt, _ = make_runtime(tmp_path, artifact={"uri": uri, "allowUnverified": True})
    assert rt.ready
    (warning,) = [r for r in caplog.records if "unverified" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert warning.getMessage() == (
        f"loading an unverified artifact: spec.artifact ({uri}) has no sha256: its bytes are "
        "loaded without checking them, so whatever file is at that location serves; set its "
        "sha256 to pin it"
    )
    assert (getattr(warning, "field", None), getattr(warning, "uri", None)) == (
        "spec.artifact",
        uri,
    )


def test_the_reason_is_left_for_the_kubelet_only_where_it_mounted_the_file(
    tmp_path: Path,
) -> None:
    log = tmp_path / "termination-log"
    report_termination_reason("artifact x has sha256 a, but spec.artifact.sha256 is b", str(log))
    assert not log.exists()  # not in a pod: nothing is created
    log.write_text("")
    report_termination_reason("x" * 5000 + " the end", str(log))
    text = log.read_text()
    assert len(text) == 4000
    assert text.endswith(" the end")


INT_VIEW = FeatureView.model_validate(
    {
        "metadata": {"name": "accounts"},
        "spec": {
            "entity": {"name": "account", "joinKey": "account_id", "valueType": "INT64"},
            "features": [{"name": "a", "dtype": "FLOAT", "default": 0.0}],
            "source": {"type": "push"},
        },
    }
)


@pytest.mark.parametrize(
    ("view", "payload", "field"),
    [
        (VIEW, {"card_id": "\ud800", "features": {"amount": 1}}, "card_id"),
        (VIEW, {"card_id": "x" * 2000, "features": {"amount": 1}}, "card_id"),
        (INT_VIEW, {"account_id": 2**64, "features": {"amount": 1}}, "account_id"),
        (INT_VIEW, {"account_id": "abc", "features": {"amount": 1}}, "account_id"),
        (INT_VIEW, {"account_id": "--5", "features": {"amount": 1}}, "account_id"),
        (VIEW, {"card_id": "c1", "features": {"amount": 10**400}}, "features.amount"),
        (VIEW, {"card_id": "c1", "features": {"amount": 1e300}}, "features.amount"),
    ],
)
def test_input_the_store_or_model_cannot_take_is_a_400_never_a_store_failure(
    tmp_path: Path, view: FeatureView, payload: dict[str, Any], field: str
) -> None:
    """issue 12: one caller's unencodable id must not open the features breaker for all."""
    rt, reader = make_runtime(tmp_path)
    rt.view = view
    rt.entity_field = view.spec.entity.join_key
    for _ in range(30):  # more than the breaker's window: had they counted, it would be open
        with pytest.raises(RequestError) as err:
            asyncio.run(rt.predict(payload))
        assert (err.value.status, err.value.field) == (400, field)
    assert reader.calls == 0
    assert rt.feature_breaker.state.name == "CLOSED"


def test_an_int64_entity_id_may_come_as_a_string_of_digits(tmp_path: Path) -> None:
    rt, _ = make_runtime(tmp_path)
    rt.view = INT_VIEW
    rt.entity_field = "account_id"
    assert rt.entity_id({"account_id": "-42"}) == "-42"
    assert rt.entity_id({"account_id": 2**63 - 1}) == str(2**63 - 1)
    batch_row = {"account_id": "nope"}
    with pytest.raises(RequestError) as err:
        rt.entity_id(batch_row, "instances[3].")
    assert err.value.field == "instances[3].account_id"
