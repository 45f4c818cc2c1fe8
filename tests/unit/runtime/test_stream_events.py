"""`rtml stream`'s pure parts: parsing an event, the payload and results it gives, and the
window plan the Lua script reads."""

from __future__ import annotations

import pytest

from rtml.api import FeatureView
from rtml_runtime.feast_codec import codec, field_name
from rtml_runtime.stream.events import (
    EventError,
    EventFields,
    StreamEvent,
    error_fields,
    numeric_values,
    parse_event,
    parse_time,
    predict_payload,
    result_fields,
)
from rtml_runtime.stream.windowstore import IDLE_GRACE_S, WindowPlan

pytestmark = pytest.mark.unit
NAMES = EventFields(event_id="event_id", entity="card_id", time="ts")


def test_an_event_is_read_from_its_fields() -> None:
    raw = {b"event_id": b"e1", b"card_id": b"c7", b"ts": b"1700000000.5", b"amount": b"12.5"}
    event = parse_event("1-0", raw, NAMES)
    assert event == StreamEvent(
        "1-0", "e1", "c7", 1700000000.5, {"event_id": "e1", "card_id": "c7", "ts": "1700000000.5",
                                          "amount": "12.5"}
    )  # fmt: skip
    # Without an event id the entry's id is the event's (stable across redeliveries).
    assert parse_event("9-3", {b"card_id": b"c", b"ts": b"1"}, NAMES).event_id == "9-3"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1700000000", 1700000000.0),
        ("2023-11-14T22:13:20Z", 1700000000.0),
        ("2023-11-14T23:13:20+01:00", 1700000000.0),
    ],
)
def test_event_time_is_epoch_seconds_or_iso_with_a_zone(text: str, seconds: float) -> None:
    assert parse_time(text, "ts") == seconds


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({b"ts": b"1"}, "card_id", "the entity id is missing: send it as 'card_id'"),
        ({b"card_id": b"c"}, "ts", "the event time is missing"),
        ({b"card_id": b"c", b"ts": b"yesterday"}, "ts", "epoch seconds or an ISO 8601"),
        ({b"card_id": b"c", b"ts": b"2023-11-14T22:13:20"}, "ts", "has no time zone"),
        ({b"card_id": b"c", b"ts": b"nan"}, "ts", "finite"),
        ({b"card_id": b"c", b"ts": b"1", b"note": b"x" * 5000}, "note", "over 4096 bytes"),
    ],
)
def test_an_unusable_event_is_refused_naming_the_field(
    raw: dict[bytes, bytes], field: str, words: str
) -> None:
    with pytest.raises(EventError, match=words) as err:
        parse_event("1-0", raw, NAMES)
    assert err.value.field == field


def test_aggregated_values_are_numbers_or_absent() -> None:
    event = StreamEvent("1-0", "e", "c", 1.0, {"amount": "12.50", "qty": "", "n": "3"})
    assert numeric_values(event, ["amount", "qty", "missing", "n"]) == ["12.5", "", "", "3.0"]
    bad = StreamEvent("1-0", "e", "c", 1.0, {"amount": "twelve"})
    with pytest.raises(EventError, match="amount must be a number") as err:
        numeric_values(bad, ["amount"])
    assert err.value.field == "amount"
    with pytest.raises(EventError, match="finite"):
        numeric_values(StreamEvent("1-0", "e", "c", 1.0, {"amount": "inf"}), ["amount"])


def test_the_payload_and_the_results_of_an_event() -> None:
    event = StreamEvent("5-1", "e5", "c9", 1700000000.25, {"amount": "80", "country": "FR"})
    assert predict_payload(event, "card_id", ["amount", "country", "absent"]) == {
        "card_id": "c9",
        "features": {"amount": 80.0, "country": "FR"},
    }
    answer = {"score": 0.25, "model": "m", "version": "v1", "variant": "champion",
              "degraded": False, "latency_ms": 1.5}  # fmt: skip
    assert result_fields(event, answer) == {
        "event_id": "e5", "entry_id": "5-1", "entity": "c9", "event_time": "1700000000.25",
        "score": "0.25", "model": "m", "version": "v1", "variant": "champion",
        "degraded": "false", "latency_ms": "1.5",
    }  # fmt: skip
    assert error_fields("5-1", None, "invalid_input", "no amount", "features.amount") == {
        "event_id": "5-1", "entry_id": "5-1", "error": "invalid_input", "message": "no amount",
        "field": "features.amount",
    }  # fmt: skip


def test_the_window_plan_of_a_view() -> None:
    view = FeatureView.model_validate(
        {
            "metadata": {"name": "card-windows"},
            "spec": {
                "entity": {"name": "card", "joinKey": "card_id"},
                "features": [],
                "source": {"type": "push"},
                "aggregations": [
                    {"name": "n_1m", "function": "count", "window": "1m"},
                    {"name": "max_qty_1h", "function": "max", "field": "qty", "window": "1h"},
                    {"name": "sum_amount_48h", "function": "sum", "field": "amount",
                     "window": "48h"},
                ],
            },
        }
    )  # fmt: skip
    plan = WindowPlan.of(view)
    assert plan.view == "card_windows"
    assert plan.fields == ("amount", "qty")
    assert plan.widths == (1, 60, 3600)
    assert plan.horizon_s == 48 * 3600
    assert plan.aggregations == (
        (1, "count", 0, 60, field_name("card_windows", "n_1m")),
        (2, "max", 2, 60, field_name("card_windows", "max_qty_1h")),
        (3, "sum", 1, 48, field_name("card_windows", "sum_amount_48h")),
    )
    assert plan.keys("c:1", b"K") == [
        "rtml:win:card_windows:c:1:seen", b"K", "rtml:win:card_windows:c:1:b1",
        "rtml:win:card_windows:c:1:b60", "rtml:win:card_windows:c:1:b3600",
    ]  # fmt: skip
    event = StreamEvent("1-0", "e1", "c:1", 100.5, {"amount": "2"})
    args = plan.args(event, codec())
    tags = [bytes([codec().float_tag]), bytes([codec().int64_tag])]
    head = ["e1", "100.5", 48 * 3600 + IDLE_GRACE_S, 48 * 3600, "_ts:card_windows", *tags]
    assert args[:10] == [*head, 2, "2.0", ""]
    assert args[10:15] == [3, 1, 60, 3600, 3]


def test_a_view_without_aggregations_has_no_plan() -> None:
    view = FeatureView.model_validate(
        {
            "metadata": {"name": "plain"},
            "spec": {
                "entity": {"name": "card", "joinKey": "card_id"},
                "features": [{"name": "f", "dtype": "FLOAT"}],
                "source": {"type": "push"},
            },
        }
    )
    with pytest.raises(ValueError, match=r"declares no spec\.aggregations"):
        WindowPlan.of(view)
