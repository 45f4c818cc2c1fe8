"""The runtime's metrics stay in process memory even where BentoML turned on prometheus_client's
multiprocess mode (it starts its workers with PROMETHEUS_MULTIPROC_DIR set)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families

from rtml.api.model import Model
from rtml_runtime.bootstrap import build_app
from rtml_runtime.config import RuntimeConfig
from rtml_runtime.metrics import RuntimeMetrics
from rtml_runtime.prometheus_compat import use_in_process_values
from tests.unit.runtime.onnx_fixtures import write_sum_model

pytestmark = pytest.mark.unit


def _samples(metrics: RuntimeMetrics) -> dict[tuple[str, str], float]:
    body, _ = metrics.exposition()
    return {
        (s.name, s.labels.get("outcome", "")): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_metrics_made_after_the_switch_write_no_multiprocess_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    # What prometheus_client chose at import in a BentoML worker; monkeypatch restores it.
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    before = RuntimeMetrics().variant("fraud", "v1", "champion")
    before.outcomes["ok"].inc()
    assert list(tmp_path.iterdir()), "the multiprocess mode this test relies on is not on"
    for f in tmp_path.iterdir():
        f.unlink()

    use_in_process_values()
    metrics = RuntimeMetrics()
    m = metrics.variant("fraud", "v1", "champion")
    m.outcomes["ok"].inc(3)
    m.inflight.inc()
    m.duration.observe(0.0004)

    assert list(tmp_path.iterdir()) == []
    samples = _samples(metrics)
    assert samples[("rtml_requests_total", "ok")] == 3.0
    assert samples[("rtml_inflight_requests", "")] == 1.0
    assert samples[("rtml_request_duration_seconds_count", "")] == 1.0


def test_a_runtime_put_together_under_multiprocess_mode_keeps_its_metrics_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = tmp_path / "prometheus"
    files.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(files))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    artifact = write_sum_model(tmp_path / "m.onnx", ["a", "b"])
    model = Model.model_validate(
        {
            "metadata": {"name": "fraud"},
            "spec": {
                "version": "v1",
                "artifact": {
                    "uri": f"file://{artifact}",
                    "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
                },
                "features": {"requestFeatures": ["a", "b"]},
            },
        }
    )
    app = build_app(RuntimeConfig(model=model, feature_view=None, base_dir=tmp_path))
    app.runtime.metrics.variant("fraud", "v1", "champion").outcomes["ok"].inc()
    assert list(files.iterdir()) == []
    assert _samples(app.runtime.metrics)[("rtml_requests_total", "ok")] == 1.0
