"""benchmarks/benchlib/ranking_report.py: RESULTS.md's ranking section holds the newest result
of each example and leaves the rest of the file as it was."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.runtime_proc import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from benchlib.ranking_report import write_ranking_md
from benchlib.report import RANKING_HEADING

pytestmark = pytest.mark.unit


def result(batch_ms: float, example: str | None = None) -> dict[str, Any]:
    args: dict[str, Any] = {"runs": 1, "candidates": 500, "repeats": 5, "warmup": 1}
    if example is not None:
        args["example"] = example
    run = {
        "batch_call_ms": batch_ms,
        "batch_rows_per_s": 500 / batch_ms * 1000,
        "single_calls_ms": 500.0,
        "single_rows_per_s": 1000.0,
    }
    return {"args": args, "runs": [run], "median": {**run, "speedup": 50.0 / batch_ms}}


def test_the_newest_run_of_each_example_replaces_only_its_section(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    for stamp, report in [
        ("20261201T000000Z", result(11.0)),  # before --example: fraud's
        ("20261202T000000Z", result(22.0, "ranking")),
        ("20261203T000000Z", result(33.0, "ranking")),
    ]:
        (results / f"ranking-{stamp}.json").write_text(json.dumps(report))
    md = tmp_path / "RESULTS.md"
    md.write_text("# r\n\n## Results\n\ntext\n\n## Floors\n\nfloors\n")
    write_ranking_md(results, md)
    first = md.read_text()
    assert first.index("## Results") < first.index(RANKING_HEADING) < first.index("## Floors")
    rows = [line for line in first.splitlines() if line.startswith(("| fraud", "| ranking"))]
    assert [r.split(" | ")[2].split(" ")[0] for r in rows] == ["11.0", "33.0"]
    assert "ranking-20261203T000000Z.json" in first
    assert "--runs 1 --candidates 500 --repeats 5 --warmup 1" in first  # rebuilt command
    (results / "ranking-20261204T000000Z.json").write_text(json.dumps(result(44.0, "fraud")))
    write_ranking_md(results, md)
    second = md.read_text()
    assert second.count(RANKING_HEADING) == 1
    assert "| fraud | 500 | 44.0 (44.0)" in second
    assert "| ranking | 500 | 33.0 (33.0)" in second
    ranking = second[second.index(RANKING_HEADING) : second.index("## Floors")]
    assert second.replace(ranking, "") == "# r\n\n## Results\n\ntext\n\n## Floors\n\nfloors\n"
