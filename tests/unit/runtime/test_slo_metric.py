"""rtml_slo_p99_latency_seconds: the Model's latency objective, exported from the moment the
runtime is put together (before it is ready), so the chart's RtmlLatencySLOBreached alert
compares each Model's p99 with its own spec.slo.p99LatencyMs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rtml.api.model import Model
from rtml_runtime.bootstrap import build_app
from rtml_runtime.config import RuntimeConfig
from tests.unit.runtime.onnx_fixtures import write_sum_model

pytestmark = pytest.mark.unit


def test_the_models_p99_objective_is_exported_in_seconds(tmp_path: Path) -> None:
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
                "slo": {"p99LatencyMs": 35, "timeoutMs": 100, "featureBudgetMs": 20},
            },
        }
    )
    app = build_app(RuntimeConfig(model=model, feature_view=None, base_dir=tmp_path))
    body, _ = app.runtime.metrics.exposition()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("rtml_slo_p99_latency_seconds", (("model", "fraud"),))] == 0.035
    assert not app.runtime.ready  # exported before the model is loaded


def test_the_runtime_exports_its_build_and_process_metrics() -> None:
    from rtml_runtime.metrics import RuntimeMetrics

    names = {s.name for family in RuntimeMetrics().registry.collect() for s in family.samples}
    assert {"rtml_build_info", "process_resident_memory_bytes", "python_info"} <= names
