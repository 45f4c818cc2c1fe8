"""One stream event: parsed from a stream entry's fields, turned into a /predict payload, and
answered by a result entry. Pure: no Redis, no runtime."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MAX_FIELD_BYTES = 4096  # a field of an event, not a payload
RawFields = Mapping[bytes, bytes] | Mapping[str, str]  # as Redis returns them, or decoded


class EventError(ValueError):
    """An event that cannot be scored; the message names the field. It is answered with an
    error result (and acknowledged): redelivering it would fail the same way."""

    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


@dataclass(frozen=True, slots=True)
class EventFields:
    """Which fields of an entry hold the event's id, entity and time (`rtml stream` options)."""

    event_id: str = "event_id"
    entity: str = "entity_id"
    time: str = "event_time"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    entry_id: str  # the stream's id of the entry (what is acknowledged)
    event_id: str  # the producer's id of the event (what de-duplicates)
    entity: str
    event_time: float  # epoch seconds, from the event itself
    fields: dict[str, str]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def decode_fields(raw: RawFields) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def parse_time(text: str, field: str) -> float:
    """Epoch seconds from epoch seconds (`1733212800.25`) or ISO 8601 with a zone
    (`2026-12-03T08:00:00Z`); a time without a zone is refused rather than guessed."""
    try:
        value = float(text)
    except ValueError:
        return _iso_seconds(text, field)
    if not math.isfinite(value):
        raise EventError(f"{field} must be a finite number of seconds", field)
    return value


def _iso_seconds(text: str, field: str) -> float:
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise EventError(
            f"{field} must be epoch seconds or an ISO 8601 time, not {text[:64]!r}", field
        ) from None
    if stamp.tzinfo is None:
        raise EventError(f"{field} {text[:64]!r} has no time zone (add Z or +00:00)", field)
    return stamp.astimezone(UTC).timestamp()


def parse_event(entry_id: str, raw: RawFields, names: EventFields) -> StreamEvent:
    """The event in one stream entry. Without an event id field the entry's own id is the
    event id (it is the same on every redelivery, though not when a producer adds it twice)."""
    fields = decode_fields(raw)
    for name, value in fields.items():
        if len(value) > MAX_FIELD_BYTES:
            raise EventError(f"{name} is over {MAX_FIELD_BYTES} bytes", name)
    entity = fields.get(names.entity)
    if not entity:
        raise EventError(f"the entity id is missing: send it as {names.entity!r}", names.entity)
    stamp = fields.get(names.time)
    if stamp is None:
        raise EventError(f"the event time is missing: send it as {names.time!r}", names.time)
    return StreamEvent(
        entry_id=entry_id,
        event_id=fields.get(names.event_id) or entry_id,
        entity=entity,
        event_time=parse_time(stamp, names.time),
        fields=fields,
    )


def numeric_values(event: StreamEvent, names: Sequence[str]) -> list[str]:
    """The aggregated fields' values as the window script takes them: the number's text, or ""
    when the event lacks the field (counted as an event, not as a value)."""
    out = []
    for name in names:
        text = event.fields.get(name, "")
        if text:
            try:
                value = float(text)
            except ValueError:
                raise EventError(f"{name} must be a number, not {text[:64]!r}", name) from None
            if not math.isfinite(value):
                raise EventError(f"{name} must be a finite number", name)
            text = repr(value)
        out.append(text)
    return out


def predict_payload(
    event: StreamEvent, entity_key: str | None, request_features: Sequence[str]
) -> dict[str, Any]:
    """The /predict body an event becomes: its entity under the Model's entity key and the
    Model's request features from its fields (numbers where they parse as numbers)."""
    features: dict[str, Any] = {}
    for name in request_features:
        if name in event.fields:
            text = event.fields[name]
            try:
                features[name] = float(text)
            except ValueError:
                features[name] = text
    payload: dict[str, Any] = {"features": features}
    if entity_key is not None:
        payload[entity_key] = event.entity
    return payload


def result_fields(event: StreamEvent, answer: Mapping[str, Any]) -> dict[str, str]:
    """The output stream's entry for a scored event."""
    return {
        "event_id": event.event_id,
        "entry_id": event.entry_id,
        "entity": event.entity,
        "event_time": repr(event.event_time),
        "score": repr(float(answer["score"])),
        "model": str(answer["model"]),
        "version": str(answer["version"]),
        "variant": str(answer["variant"]),
        "degraded": "true" if answer["degraded"] else "false",
        "latency_ms": repr(answer["latency_ms"]),
    }


def error_fields(
    entry_id: str, event_id: str | None, code: str, message: str, field: str | None
) -> dict[str, str]:
    """The output stream's entry for an event that could not be scored."""
    out = {"event_id": event_id or entry_id, "entry_id": entry_id, "error": code}
    out["message"] = message
    if field:
        out["field"] = field
    return out
