"""Reading the traffic plan file: changes noticed, a ConfigMap swap followed, bad files kept out."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rtml.api.traffic import CHAMPION_ONLY, TrafficPlan, plan_json
from rtml_runtime.trafficfile import TrafficFile
from tests.configmap_volume import kubelet_write

pytestmark = pytest.mark.unit
PLAN = TrafficPlan.model_validate(
    {
        "experiment": "fraud-v2",
        "strategy": "canary",
        "candidate": {"version": "v2", "artifact": {"uri": "file:///m.onnx", "sha256": "a" * 64}},
        "weight": 25,
    }
)


def test_a_missing_file_is_no_experiment(tmp_path: Path) -> None:
    f = TrafficFile(tmp_path / "traffic.json")
    assert f.read() == CHAMPION_ONLY
    assert f.read() is None  # unchanged


def test_changes_through_a_configmap_swap_are_noticed(tmp_path: Path) -> None:
    f = TrafficFile(tmp_path / "traffic.json")
    kubelet_write(tmp_path, "traffic.json", plan_json(PLAN), 1)
    first = f.read()
    assert first is not None
    assert (first.weight, first.experiment) == (25, "fraud-v2")
    assert first.revision  # plan_json writes the revision
    assert f.read() is None
    kubelet_write(tmp_path, "traffic.json", plan_json(PLAN.model_copy(update={"weight": 50})), 2)
    second = f.read()
    assert second is not None
    assert second.weight == 50
    assert second.revision != first.revision
    kubelet_write(tmp_path, "traffic.json", plan_json(CHAMPION_ONLY), 3)
    third = f.read()
    assert third is not None
    assert not third.active


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('{"experiment": "e", "strategy": "canary"', "Invalid JSON"),
        (plan_json(PLAN).replace('"weight": 25', '"weight": 101'), "weight"),
        ('{"experiment": "e"}', "strategy and candidate"),
        ('{"wieght": 3}', "wieght"),
    ],
)
def test_a_bad_file_is_logged_naming_the_file_and_field_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, named: str
) -> None:
    path = tmp_path / "traffic.json"
    path.write_text(plan_json(PLAN))
    f = TrafficFile(path)
    assert f.read() is not None
    path.write_text(text)
    with caplog.at_level(logging.ERROR, "rtml.runtime.traffic"):
        assert f.read() is None  # the plan in effect stays
    (record,) = caplog.records
    assert str(path) in record.getMessage()
    assert named in record.getMessage()
    path.write_text(plan_json(PLAN.model_copy(update={"weight": 5})))
    fixed = f.read()
    assert fixed is not None
    assert fixed.weight == 5
