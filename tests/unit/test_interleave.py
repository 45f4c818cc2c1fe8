"""benchmarks/benchlib/interleave.py: how slices become a step, and rounds become pairs."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from tests.runtime_proc import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from benchlib.interleave import order, pooled, round_pairs, saturation_by_round, spread

pytestmark = pytest.mark.unit


def wrk_slice(
    r: int, requests: int, rps: float, p99: float, steal: float = 0.0, c: int = 1
) -> dict[str, Any]:
    return {
        "round": r,
        "concurrency": c,
        "duration_s": 2.0,
        "requests": requests,
        "rps": rps,
        "p50_ms": p99 / 4,
        "p75_ms": p99 / 3,
        "p90_ms": p99 / 2,
        "p99_ms": p99,
        "non_2xx": 0,
        "socket_errors": 1 if r == 0 else 0,
        "server_cpu_share": 0.9,
        "load_cpu_share": 0.5,
        "foreign_cpu_share": 0.0,
        "foreign_load_cpu_share": 0.0,
        "steal_share": steal,
        "disturbance": steal,
    }


def test_each_server_takes_each_place_in_turn() -> None:
    rounds = [order([0, 1, 2], r) for r in range(3)]
    assert rounds == [[0, 1, 2], [1, 2, 0], [2, 0, 1]]
    for place in range(3):
        assert sorted(r[place] for r in rounds) == [0, 1, 2]


def test_a_step_pools_requests_over_time_and_takes_the_median_slice_percentile() -> None:
    # 2,000 requests at 1,000/s (2 s) and 1,000 at 250/s (4 s): 3,000 in 6 s, not the mean
    # of the two rates (625/s).
    step = pooled([wrk_slice(0, 2000, 1000.0, 1.0), wrk_slice(1, 1000, 250.0, 9.0, 0.3)])
    assert step["requests"] == 3000
    assert step["rps"] == pytest.approx(500.0)
    assert step["p99_ms"] == pytest.approx(5.0)  # the median of two
    assert step["socket_errors"] == 1
    assert step["disturbance"] == pytest.approx(0.3)  # the worst slice's
    assert step["steal_share"] == pytest.approx(0.15)
    assert [s["round"] for s in step["slices"]] == [0, 1]


def run(number: int, **steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"run": number, **{k: pooled(v) for k, v in steps.items()}}


def test_rounds_pair_by_run_and_round_and_skip_failed_runs() -> None:
    base = [
        run(1, c1=[wrk_slice(0, 100, 50.0, 1.0), wrk_slice(1, 100, 50.0, 2.0)]),
        run(2, c1=[wrk_slice(0, 100, 50.0, 4.0)]),
        {"run": 3, "error": "never answered"},
    ]
    other = [
        run(1, c1=[wrk_slice(1, 100, 50.0, 3.0), wrk_slice(0, 100, 50.0, 1.5)]),
        run(2, c1=[wrk_slice(0, 100, 50.0, 5.0)]),
        run(3, c1=[wrk_slice(0, 100, 50.0, 9.0)]),
    ]

    def p99(r: dict[str, Any]) -> dict[int, float]:
        return {s["round"]: s["p99_ms"] for s in r.get("c1", {}).get("slices", [])}

    assert round_pairs(base, other, p99) == [(1.0, 1.5), (2.0, 3.0), (4.0, 5.0)]


def test_saturation_per_round_is_the_larger_of_c16_and_c64() -> None:
    r = run(
        1,
        c16=[wrk_slice(0, 100, 900.0, 1.0, c=16), wrk_slice(1, 100, 800.0, 1.0, c=16)],
        c64=[wrk_slice(0, 100, 850.0, 1.0, c=64), wrk_slice(1, 100, 950.0, 1.0, c=64)],
    )
    assert saturation_by_round(r) == {0: 900.0, 1: 950.0}


def test_spread_gives_the_median_and_quartiles() -> None:
    assert spread([1.0]) == {"median": 1.0, "q1": 1.0, "q3": 1.0, "n": 1}
    s = spread([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s["median"], s["q1"], s["q3"], s["n"]) == (3.0, 2.0, 4.0, 5)
