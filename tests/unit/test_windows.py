"""Window bucketing, aggregate math, durations and the bounds of spec.aggregations."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from rtml.api import FeatureView
from rtml.api.featureview import MAX_AGGREGATIONS, Aggregation
from rtml.api.windows import (
    MAX_BUCKETS,
    BucketStats,
    aggregate,
    bucket_of,
    granularity,
    in_window,
    window_aggregate,
    window_seconds,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("window", "seconds", "width"),
    [
        ("1s", 1, 1),
        ("1m", 60, 1),
        ("90s", 90, 1),
        ("5m", 300, 1),
        ("6m", 360, 60),
        ("1h", 3600, 60),
        ("1h30m", 5400, 60),
        ("24h", 86400, 60),
        ("25h", 90000, 3600),
        ("720h", 2592000, 3600),
    ],
)
def test_a_window_has_whole_buckets_of_its_granularity(
    window: str, seconds: int, width: int
) -> None:
    assert window_seconds(window) == seconds
    assert granularity(seconds) == width
    assert seconds // width <= MAX_BUCKETS


@pytest.mark.parametrize(
    ("window", "words"),
    [
        ("500ms", "shorter than 1s"),
        ("721h", "longer than 720h"),
        ("1500ms", "whole number of seconds"),
        ("301s", "whole number of minutes"),
        ("24h30m", "whole number of hours"),
        ("1d", "not a duration"),
    ],
)
def test_a_window_that_cannot_be_kept_exactly_is_refused(window: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        window_seconds(window)


def test_buckets_follow_event_time_and_the_window_ends_at_the_latest_bucket() -> None:
    assert bucket_of(59.9, 60) == 0
    assert bucket_of(60.0, 60) == 1
    assert bucket_of(-0.5, 1) == -1
    # A 1h window at minute buckets, latest event at 10:00:30: buckets 09:01 .. 10:00.
    latest = 10 * 3600 + 30
    assert in_window(bucket_of(10 * 3600, 60), latest, 3600, 60)
    assert in_window(bucket_of(9 * 3600 + 60, 60), latest, 3600, 60)
    assert not in_window(bucket_of(9 * 3600 + 59, 60), latest, 3600, 60)
    assert not in_window(bucket_of(10 * 3600 + 60, 60), latest, 3600, 60)


def test_aggregates_over_buckets() -> None:
    a = BucketStats().add(3.0).add(None).add(5.0)
    b = BucketStats().add(-1.0)
    assert (a.events, a.count, a.total, a.largest) == (3, 2, 8.0, 5.0)
    assert aggregate("count", [a, b]) == 4
    assert aggregate("sum", [a, b]) == 7.0
    assert aggregate("avg", [a, b]) == pytest.approx(7.0 / 3)
    assert aggregate("max", [a, b]) == 5.0
    # No value in the window: the feature's default, 0.
    empty = [BucketStats().add(None)]
    assert aggregate("avg", empty) == 0.0
    assert aggregate("max", empty) == 0.0
    assert aggregate("max", [BucketStats().add(-4.0)]) == -4.0
    with pytest.raises(ValueError, match="unknown function 'median'"):
        aggregate("median", [a])


def test_window_aggregate_keeps_only_the_buckets_in_the_window() -> None:
    width = granularity(60)
    buckets = {
        bucket_of(t, width): BucketStats().add(v) for t, v in [(0, 1.0), (30, 2.0), (61, 4.0)]
    }
    assert window_aggregate("sum", 60, buckets, latest=61) == 6.0  # buckets 2..61
    assert window_aggregate("count", 60, buckets, latest=89) == 2  # buckets 30..89
    assert window_aggregate("count", 60, buckets, latest=90) == 1  # buckets 31..90
    assert window_aggregate("max", 60, buckets, latest=200) == 0.0


def view(aggregations: list[dict[str, Any]], features: list[dict[str, Any]] | None = None) -> Any:
    return FeatureView.model_validate(
        {
            "metadata": {"name": "cards"},
            "spec": {
                "entity": {"name": "card", "joinKey": "card_id"},
                "features": features or [],
                "aggregations": aggregations,
                "source": {"type": "push"},
            },
        }
    )


def test_aggregations_are_served_as_features_after_the_declared_ones() -> None:
    v = view(
        [
            {"name": "txn_1h", "function": "count", "window": "1h"},
            {"name": "amount_avg_24h", "function": "avg", "field": "amount", "window": "24h"},
        ],
        [{"name": "age_days", "dtype": "INT64", "default": 0}],
    )
    served = [(f.name, f.dtype, f.default) for f in v.spec.served_features]
    assert served == [
        ("age_days", "INT64", 0),
        ("txn_1h", "INT64", 0),
        ("amount_avg_24h", "FLOAT", 0),
    ]


@pytest.mark.parametrize(
    ("aggregations", "features", "words"),
    [
        (
            [{"name": "n", "function": "count", "field": "amount", "window": "1h"}],
            None,
            "count takes no field",
        ),
        ([{"name": "s", "function": "sum", "window": "1h"}], None, "field is required for sum"),
        ([{"name": "s", "function": "median", "field": "a", "window": "1h"}], None, "function"),
        (
            [{"name": "s", "function": "max", "field": "a", "window": "301s"}],
            None,
            "whole number of minutes",
        ),
        (
            [{"name": "n", "function": "count", "window": "1h"}],
            [{"name": "n", "dtype": "INT64"}],
            "'n' is already a feature's",
        ),
        (
            [{"name": "n", "function": "count", "window": f"{i + 1}m"} for i in range(2)],
            None,
            "'n' is already",
        ),
        (
            [
                {"name": f"n{i}", "function": "count", "window": "1h"}
                for i in range(MAX_AGGREGATIONS + 1)
            ],
            None,
            f"at most {MAX_AGGREGATIONS} items",
        ),
    ],
)
def test_invalid_aggregations_are_refused_naming_the_field(
    aggregations: list[dict[str, Any]], features: list[dict[str, Any]] | None, words: str
) -> None:
    with pytest.raises(ValidationError) as err:
        view(aggregations, features)
    assert words in str(err.value)


def test_an_aggregation_window_is_a_short_duration() -> None:
    with pytest.raises(ValidationError, match="at most 16 characters"):
        Aggregation.model_validate({"name": "n", "function": "count", "window": "1h" + "0s" * 8})
