"""charts/rtml/files/prometheus-rules.yaml: promtool accepts it, each alert has a promtool unit
test (tests/promtool/) showing it fire and stay quiet, and every series the rules read is one the
runtime exports, one they record, or one docs/observability.md lists as the operator's to export.

promtool is Debian's `prometheus` package; without it these tests fail, never skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from rtml_runtime.metrics import RuntimeMetrics

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "rtml" / "files" / "prometheus-rules.yaml"
PROMTOOL_TESTS = ROOT / "tests" / "promtool"
DOC = ROOT / "docs" / "observability.md"
# Series the rules read that no rtml code exports yet: the operator's (docs/observability.md).
REQUIRED_FROM_THE_OPERATOR = {"rtml_experiment_phase"}
PROMQL_FUNCTIONS_AND_KEYWORDS = {
    "sum", "rate", "histogram_quantile", "and", "unless", "max", "max_over_time", "scalar",
    "vector", "count", "round",
}  # fmt: skip


def promtool() -> str:
    found = shutil.which("promtool") or (
        "/usr/bin/promtool" if Path("/usr/bin/promtool").is_file() else None
    )
    if found is None:
        pytest.fail("promtool is missing: install Debian's prometheus package")
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def exported_series() -> set[str]:
    """Every sample name the runtime's registry can expose (histograms as _bucket, ...)."""
    names = set()
    for family in RuntimeMetrics().registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
    return names


def series_read(expr: str) -> set[str]:
    """The metric names in a PromQL expression (label matchers and lists, strings and durations
    left out)."""
    bare = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]', " ", expr)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare))
    return {n for n in names if n not in PROMQL_FUNCTIONS_AND_KEYWORDS}


def test_promtool_checks_the_rule_file() -> None:
    out = run_promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout


@pytest.mark.parametrize("test_file", sorted(PROMTOOL_TESTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_promtool_unit_tests_pass(test_file: Path) -> None:
    out = run_promtool("test", "rules", str(test_file))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_unit_tests_read_the_charts_rule_file() -> None:
    for test_file in PROMTOOL_TESTS.glob("*.yaml"):
        files = yaml.safe_load(test_file.read_text())["rule_files"]
        assert [(test_file.parent / f).resolve() for f in files] == [RULES], test_file.name


@pytest.mark.parametrize("alert", [a["alert"] for a in alerts()])
def test_each_alert_is_shown_firing_and_not_firing(alert: str) -> None:
    fired: list[str] = []
    quiet: list[str] = []
    for test_file in sorted(PROMTOOL_TESTS.glob("*.yaml")):
        for case in yaml.safe_load(test_file.read_text())["tests"]:
            for check in case.get("alert_rule_test") or []:
                if check["alertname"] == alert:
                    (fired if check.get("exp_alerts") else quiet).append(test_file.name)
    assert fired, f"no promtool test shows {alert} firing"
    assert quiet, f"no promtool test shows {alert} not firing"


def test_a_promtool_unit_test_that_expects_the_wrong_alert_fails(tmp_path: Path) -> None:
    """The wrapper would see a failing promtool test: promtool exits non-zero."""
    case = yaml.safe_load((PROMTOOL_TESTS / "circuit_breaker_open.yaml").read_text())
    case["rule_files"] = [str(RULES)]
    case["tests"][0]["alert_rule_test"][0]["exp_alerts"] = [{"exp_labels": {"pod": "nope"}}]
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump(case))
    out = run_promtool("test", "rules", str(wrong))
    assert out.returncode != 0
    assert "FAILED" in out.stdout + out.stderr


def test_every_series_read_is_exported_recorded_or_required_from_the_operator() -> None:
    recorded = {r["record"] for r in rules() if "record" in r}
    known = exported_series() | recorded | REQUIRED_FROM_THE_OPERATOR
    for rule in rules():
        unknown = series_read(rule["expr"]) - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')} reads {unknown}"
    assert "rtml_slo_p99_latency_seconds" in exported_series()


def test_every_alert_is_explained_in_the_docs_with_severity_and_runbook() -> None:
    doc = DOC.read_text()
    for alert in alerts():
        name = alert["alert"]
        assert re.search(rf"^### `?{name}`?$", doc, re.MULTILINE), f"{name}: no section in {DOC}"
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert set(alert["annotations"]) == {"summary", "description", "runbook"}
        assert alert["annotations"]["runbook"] == f"docs/observability.md#{name.lower()}"
    for name in REQUIRED_FROM_THE_OPERATOR:
        assert name in doc
