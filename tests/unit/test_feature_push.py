"""Pushed rows checked against their FeatureView, and the registry's view read back as one."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from rtml.api.featureview import FeatureView
from rtml.features.push import MAX_PUSH_ROWS, PushError, check_rows

pytestmark = pytest.mark.unit
VIEW = FeatureView.model_validate(
    {
        "metadata": {"name": "cards", "namespace": "ml"},
        "spec": {
            "entity": {"name": "card", "joinKey": "card_id", "valueType": "INT64"},
            "features": [
                {"name": "amount", "dtype": "FLOAT", "default": 0.0},
                {"name": "count", "dtype": "INT32"},
                {"name": "country", "dtype": "STRING"},
                {"name": "night", "dtype": "BOOL"},
            ],
            "source": {"type": "push", "timestampField": "ts"},
        },
    }
)
GOOD = {"card_id": 7, "ts": "2026-11-27T20:00:00Z", "amount": 3, "count": 2, "country": "FR"}


def rows(**change: Any) -> dict[str, Any]:
    return {"rows": [{**GOOD, "night": False, **change}]}


def test_a_good_row_is_typed() -> None:
    (row,) = check_rows(VIEW, rows())
    assert row["amount"] == 3.0
    assert isinstance(row["amount"], float)
    assert row["ts"] == datetime(2026, 11, 27, 20, tzinfo=UTC)


def test_epoch_seconds_are_a_timestamp() -> None:
    (row,) = check_rows(VIEW, rows(ts=0))
    assert row["ts"] == datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ([], "rows"),
        ({"rows": []}, "rows"),
        ({"rows": [GOOD] * (MAX_PUSH_ROWS + 1)}, "rows"),
        ({"rows": ["x"]}, "rows[0]"),
        (rows(card_id="7"), "rows[0].card_id"),
        (rows(amount=True), "rows[0].amount"),
        (rows(amount=float("inf")), "rows[0].amount"),
        (rows(count=1.5), "rows[0].count"),
        (rows(country=1), "rows[0].country"),
        (rows(night=1), "rows[0].night"),
        (rows(ts="noon"), "rows[0].ts"),
        (rows(extra=1), "rows[0].extra"),
        ({"rows": [GOOD]}, "rows[0].night"),
    ],
)
def test_a_bad_payload_names_its_field(payload: Any, field: str) -> None:
    with pytest.raises(PushError) as e:
        check_rows(VIEW, payload)
    assert e.value.field == field
    assert field in e.value.message


@pytest.mark.feast
def test_from_feast_undoes_to_feast() -> None:
    from rtml.features.translate import from_feast, to_feast

    view = VIEW.model_copy(
        update={"spec": VIEW.spec.model_copy(update={"ttl": "3600s"})}, deep=True
    )
    back = from_feast(to_feast(view, repo_dir=None).feature_view, "INT64")
    assert back.metadata.name == "cards"
    assert back.metadata.namespace == "ml"
    assert back.spec.entity == view.spec.entity
    assert back.spec.features == view.spec.features
    assert (back.spec.ttl, back.spec.source.type, back.spec.source.timestamp_field) == (
        "3600s",
        "push",
        "ts",
    )
