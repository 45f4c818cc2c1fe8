"""charts/rtml/files/dashboard.json: a Grafana dashboard whose every query is PromQL promtool
accepts (its variables substituted), reading only series the runtime exports or the chart's
rules record. tests/integration/test_dashboard.py runs every query against a real Prometheus."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.grafana import dashboard, panels, queries, substitute
from tests.unit.test_prometheus_rules import exported_series, rules, run_promtool, series_read

pytestmark = pytest.mark.unit
VALUES = {"namespace": "ml", "model": "fraud", "__rate_interval": "1m", "datasource": "prom"}
WANTED = {"latency", "throughput", "outcomes", "circuit breakers", "feature read latency",
          "feature cache hit ratio", "replicas"}  # fmt: skip


def test_the_dashboard_has_the_panels_on_call_needs() -> None:
    titles = " | ".join(p["title"].lower() for p in panels())
    for wanted in WANTED:
        assert wanted in titles
    board = dashboard()
    assert board["uid"] == "rtml-models"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "namespace", "model"}
    assert variables["datasource"]["query"] == "prometheus"


def test_every_panel_queries_the_chosen_prometheus() -> None:
    for p in panels():
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"]
            # Scoped to the chosen namespaces and Models (the objective has neither label).
            stripped = t["expr"].replace("rtml:availability_objective", "")
            assert stripped.count('namespace=~"$namespace"') == stripped.count("{"), p["title"]
            assert stripped.count('model=~"$model"') == stripped.count("{"), p["title"]


def test_every_query_is_promql_promtool_accepts(tmp_path: Path) -> None:
    checks = [
        {"record": f"dashboard:query_{i}", "expr": substitute(q.expr, VALUES)}
        for i, q in enumerate(queries())
    ]
    variables = [v["definition"] for v in dashboard()["templating"]["list"] if "definition" in v]
    for i, definition in enumerate(variables):
        # label_values(SELECTOR, label) is Grafana's; its selector is PromQL.
        selector = definition.removeprefix("label_values(").rsplit(",", 1)[0]
        checks.append({"record": f"dashboard:variable_{i}", "expr": substitute(selector, VALUES)})
    file = tmp_path / "dashboard-queries.yaml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": checks}]}))
    out = run_promtool("check", "rules", str(file))
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_series_a_panel_reads_is_exported_or_recorded() -> None:
    known = exported_series() | {r["record"] for r in rules() if "record" in r}
    for q in queries():
        unknown = series_read(substitute(q.expr, VALUES)) - known
        assert not unknown, f"{q.panel}: {unknown}"
