"""Every query of the chart's Grafana dashboard answers with data from a real runtime.

A real `rtml serve` of the fraud example (features in a real Redis, a canary plan so champion
and candidate both answer), a real Prometheus scraping it every second with the chart's rule
file loaded (its recording rules feed several panels), some traffic; then each panel query,
its variables substituted as Grafana would, goes through Prometheus' HTTP API as Grafana sends
it (query_range) and must succeed with at least one series holding a number. The dashboard's
variables (label_values) must list the namespace and the Model.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from rtml.api.traffic import TrafficPlan, plan_json, with_revision
from tests.configmap_volume import kubelet_write
from tests.grafana import dashboard, queries, substitute
from tests.prometheus import PrometheusError, RulesPrometheus, static_scrape_config
from tests.runtime_proc import REPO, RedisServer, RuntimeProcess, write_manifest

pytestmark = [pytest.mark.prometheus, pytest.mark.runtime, pytest.mark.redis, pytest.mark.feast]
RULES = REPO / "charts" / "rtml" / "files" / "prometheus-rules.yaml"
NAMESPACE, MODEL = "ml", "fraud"
# A pod's $__rate_interval with a 1 s scrape would be 4 s; 30 s keeps every step's window
# holding traffic of this short test.
VALUES = {"namespace": NAMESPACE, "model": MODEL, "__rate_interval": "30s"}
REQUEST = json.loads((REPO / "examples/fraud/request.json").read_text())


def canary_plan(build: Path) -> TrafficPlan:
    """Half the requests to a candidate v2 (the same artifact: this is about the series)."""
    artifact = build / "model.onnx"
    return with_revision(
        TrafficPlan.model_validate(
            {
                "experiment": "fraud-v2",
                "strategy": "canary",
                "candidate": {
                    "version": "v2",
                    "artifact": {
                        "uri": f"file://{artifact}",
                        "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
                    },
                },
                "weight": 50,
            }
        )
    )


def send_traffic(proc: RuntimeProcess, seconds: float) -> dict[int, int]:
    """Known cards (features from Redis, each read twice in a row: an L1 cache hit), unknown
    ones (the view's defaults: fallback) and a few bad bodies (400: error)."""
    statuses: dict[int, int] = {}
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        i += 1
        card = f"card_{i % 200:05d}" if i % 5 else f"no-such-card-{i}"
        for _ in range(2):
            status, _, _ = proc.post("/predict", {**REQUEST, "entity_id": card})
            statuses[status] = statuses.get(status, 0) + 1
        if i % 25 == 0:
            status, _, _ = proc.post("/predict", {**REQUEST, "features": {"amount": "x"}})
            statuses[status] = statuses.get(status, 0) + 1
    return statuses


@pytest.fixture(scope="module")
def prometheus(
    fraud_build: Path, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RulesPrometheus]:
    where = tmp_path_factory.mktemp("dashboard")
    volume = where / "traffic"
    volume.mkdir()
    kubelet_write(volume, "traffic.json", plan_json(canary_plan(fraud_build)), 1)
    proc = RuntimeProcess(
        write_manifest(fraud_build, where / "fraud"),
        redis_server.url,
        extra_args=["--traffic", str(volume / "traffic.json")],
    )
    prom: RulesPrometheus | None = None
    try:
        proc.start()
        target = {f"127.0.0.1:{proc.port}": {"namespace": NAMESPACE, "pod": "fraud-0"}}
        prom = RulesPrometheus(where / "prometheus", [static_scrape_config("rtml", target)], RULES)
        try:
            prom.start()
        except PrometheusError as e:  # no binary, or it refused the rules: fail, never skip
            pytest.fail(str(e))
        prom.wait_for_scrape(datetime.now(UTC), 1)
        statuses = send_traffic(proc, seconds=8)
        assert statuses.get(200, 0) > 100, statuses
        assert statuses.get(400, 0) > 0, statuses
        # Two scrapes after the traffic, then a recording rule evaluated on them.
        for _ in range(2):
            prom.wait_for_scrape(datetime.now(UTC), 1)
        _wait_for_rules(prom)
        yield prom
    finally:
        if prom is not None:
            prom.stop()
        proc.stop()


def _wait_for_rules(prom: RulesPrometheus, timeout: float = 30.0) -> None:
    query = "namespace_model_variant:rtml_request_duration_seconds:p99_rate5m"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _numbers(prom.get("/api/v1/query", query=query)["data"]):
            return
        time.sleep(0.2)
    pytest.fail(f"{query} had no value within {timeout} s: {prom.log_tail()}")


def _numbers(data: dict[str, Any]) -> list[float]:
    """The finite values of an instant or range query's answer."""
    series = data["result"]
    raw = (
        [s["value"] for s in series]
        if data["resultType"] == "vector"
        else [v for s in series for v in s["values"]]
    )
    values = [float(v) for _, v in raw]
    return [v for v in values if math.isfinite(v)]


def test_the_rules_load_and_evaluate(prometheus: RulesPrometheus) -> None:
    groups = prometheus.get("/api/v1/rules")["data"]["groups"]
    assert {g["name"] for g in groups} == {"rtml.objectives", "rtml.recording", "rtml.alerts"}
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule


@pytest.mark.parametrize(
    "query", queries(), ids=lambda q: f"{q.panel}/{q.ref_id}".replace(" ", "_")
)
def test_every_dashboard_query_returns_data(prometheus: RulesPrometheus, query: Any) -> None:
    now = time.time()
    data = prometheus.get(
        "/api/v1/query_range",
        query=substitute(query.expr, VALUES),
        start=f"{now - 60:.3f}",
        end=f"{now:.3f}",
        step="1",
    )["data"]
    assert data["result"], f"{query.panel} ({query.ref_id}): no series"
    assert _numbers(data), f"{query.panel} ({query.ref_id}): no number in {data['result']}"


def test_both_variants_and_the_slo_are_on_the_latency_panel(prometheus: RulesPrometheus) -> None:
    (panel,) = [q for q in queries() if q.panel.startswith("Latency") and q.ref_id == "A"]
    result = prometheus.get("/api/v1/query", query=substitute(panel.expr, VALUES))["data"]
    assert {s["metric"]["variant"] for s in result["result"]} == {"champion", "candidate"}
    slo = prometheus.get("/api/v1/query", query="rtml_slo_p99_latency_seconds")["data"]
    assert [float(s["value"][1]) for s in slo["result"]] == [0.01]  # the example's 10 ms


def test_the_dashboard_variables_list_the_namespace_and_the_model(
    prometheus: RulesPrometheus,
) -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    for name, wanted in (("namespace", NAMESPACE), ("model", MODEL)):
        # label_values(SELECTOR, LABEL): Grafana asks the series' label values.
        selector, label = (
            variables[name]["definition"].removeprefix("label_values(")[:-1].rsplit(",", 1)
        )
        answer = prometheus.get(
            f"/api/v1/label/{label.strip()}/values", **{"match[]": substitute(selector, VALUES)}
        )
        assert wanted in answer["data"]
