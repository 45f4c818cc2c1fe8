"""The operator's metrics: what a handler run counts, by its outcome."""

from __future__ import annotations

import kopf
import pytest

from rtml.operator.metrics import OperatorMetrics

pytestmark = pytest.mark.unit


def value(m: OperatorMetrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def test_a_run_is_counted_by_kind_and_result() -> None:
    m = OperatorMetrics()
    with m.reconciling("Model"):
        assert value(m, "rtml_operator_reconciles_in_progress", kind="Model") == 1
    with pytest.raises(kopf.TemporaryError), m.reconciling("Model"):
        raise kopf.TemporaryError("the API server is unreachable")
    with pytest.raises(ValueError, match="bad"), m.reconciling("FeatureView"):
        raise ValueError("bad")
    assert value(m, "rtml_operator_reconciles_total", kind="Model", result="ok") == 1
    assert value(m, "rtml_operator_reconciles_total", kind="Model", result="retry") == 1
    assert value(m, "rtml_operator_reconciles_total", kind="FeatureView", result="error") == 1
    assert value(m, "rtml_operator_reconcile_duration_seconds_count", kind="Model") == 2
    assert value(m, "rtml_operator_reconciles_in_progress", kind="Model") == 0


def test_build_info_and_process_metrics_are_there_from_the_start() -> None:
    m = OperatorMetrics()
    names = {s.name for family in m.registry.collect() for s in family.samples}
    assert "rtml_build_info" in names
    assert "process_resident_memory_bytes" in names
    assert "python_info" in names


def test_an_experiments_phase_is_one_gauge_at_1_and_goes_with_it() -> None:
    m = OperatorMetrics()
    m.experiment_in("shop", "fraud-v2", "Progressing")
    m.experiment_in("shop", "fraud-v2", "RolledBack")
    labels = {"namespace": "shop", "experiment": "fraud-v2"}
    assert value(m, "rtml_experiment_phase", **labels, phase="RolledBack") == 1
    assert (
        m.registry.get_sample_value("rtml_experiment_phase", {**labels, "phase": "Progressing"})
        == 0
    )
    m.forget_experiment("shop", "fraud-v2")
    assert (
        m.registry.get_sample_value("rtml_experiment_phase", {**labels, "phase": "RolledBack"})
        is None
    )
