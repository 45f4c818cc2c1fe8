"""The prometheus-adapter rules the chart ships serve exactly the metrics the rendered HPAs name,
from series the runtime exports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from rtml.operator.render.autoscaler import ADAPTER_METRICS
from tests.unit.test_prometheus_rules import exported_series

pytestmark = pytest.mark.unit
RULES = Path(__file__).resolve().parents[2] / "charts/rtml/files/prometheus-adapter-rules.yaml"


def rules() -> list[dict]:
    loaded = yaml.safe_load(RULES.read_text())
    assert isinstance(loaded, list)
    return loaded


def test_every_metric_an_hpa_names_is_served_by_one_rule() -> None:
    served = [r["name"]["as"] for r in rules()]
    assert sorted(served) == sorted(ADAPTER_METRICS.values())


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["name"]["as"])
def test_each_rule_reads_a_series_the_runtime_exports(rule: dict) -> None:
    series = re.match(r"^(\w+)\{", rule["seriesQuery"])
    assert series, rule["seriesQuery"]
    assert series.group(1) in exported_series()
    assert re.fullmatch(rule["name"]["matches"], series.group(1))
    # Per pod and namespace, so the HPA's Pods metric finds each of its pods.
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    assert "<<.LabelMatchers>>" in rule["metricsQuery"]
    assert "<<.GroupBy>>" in rule["metricsQuery"]
