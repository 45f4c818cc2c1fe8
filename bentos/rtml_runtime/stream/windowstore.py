"""A FeatureView's sliding-window aggregations, kept in Redis beside Feast's online rows.

Per entity: one hash of time buckets per granularity (rtml.api.windows) and a sorted set of the
events seen within the longest window. `windows.lua` applies one event to all of them and writes
every aggregate, as of the entity's latest event time, into Feast's own hash for the entity (the
row `FeastRedisReader` reads), in one atomic script: a redelivered event finds its marker and
changes nothing, so the aggregates stay exact under at-least-once delivery.

The plan (which fields, widths and arguments) is computed once from the view, purely.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rtml.api.featureview import FeatureView
from rtml.api.windows import HOUR, granularity
from rtml_runtime.feast_codec import FeastCodec, field_name
from rtml_runtime.features import feast_view_name
from rtml_runtime.stream.events import EventError, StreamEvent, numeric_values

SCRIPT = (Path(__file__).with_name("windows.lua")).read_text()
# Buckets are pruned by event time on every write; the TTL (wall clock) only collects the keys of
# entities that stopped sending: the longest window plus this.
IDLE_GRACE_S = HOUR
Status = Literal["ok", "duplicate", "late"]
_INT64 = re.compile(r"[+-]?[0-9]{1,19}")


@dataclass(frozen=True)
class WindowPlan:
    """What the script needs to know of a view, beside the event: pure, computed once."""

    view: str  # the Feast view name
    fields: tuple[str, ...]  # the event fields aggregated, in the order buckets keep them
    widths: tuple[int, ...]  # bucket widths in use, seconds
    horizon_s: int  # the longest window
    aggregations: tuple[tuple[int, str, int, int, bytes], ...]  # as the script reads them
    names: tuple[str, ...]  # the features written, in order

    @classmethod
    def of(cls, view: FeatureView) -> WindowPlan:
        aggs = view.spec.aggregations
        if not aggs:
            raise ValueError(f"FeatureView {view.metadata.name!r} declares no spec.aggregations")
        name = feast_view_name(view)
        fields = tuple(sorted({a.field for a in aggs if a.field is not None}))
        widths = tuple(sorted({granularity(a.window_s) for a in aggs}))
        planned = tuple(
            (
                widths.index(granularity(a.window_s)) + 1,
                a.function,
                0 if a.field is None else fields.index(a.field) + 1,
                a.window_s // granularity(a.window_s),
                field_name(name, a.name),
            )
            for a in aggs
        )
        return cls(
            view=name,
            fields=fields,
            widths=widths,
            horizon_s=max(a.window_s for a in aggs),
            aggregations=planned,
            names=tuple(a.name for a in aggs),
        )

    def keys(self, entity: str, feast_key: bytes) -> list[bytes | str]:
        """The script's keys for one entity. The entity id is the last part before a suffix
        without a colon, so two entities never share a key."""
        base = f"rtml:win:{self.view}:{entity}"
        return [f"{base}:seen", feast_key, *(f"{base}:b{w}" for w in self.widths)]

    def args(self, event: StreamEvent, codec: FeastCodec) -> list[bytes | str | int]:
        values = numeric_values(event, self.fields)
        out: list[bytes | str | int] = [
            event.event_id,
            repr(event.event_time),
            self.horizon_s + IDLE_GRACE_S,
            self.horizon_s,
            f"_ts:{self.view}",
            bytes([codec.float_tag]),
            bytes([codec.int64_tag]),
            len(values),
            *values,
            len(self.widths),
            *self.widths,
            len(self.aggregations),
        ]
        for agg in self.aggregations:
            out.extend(agg)
        return out


class WindowStore:
    """Applies events to the windows of one view in one Redis (the Feast online store's)."""

    def __init__(
        self, view: FeatureView, redis: Any, codec: FeastCodec, project: str, key_version: int
    ) -> None:
        self.plan = WindowPlan.of(view)
        self.redis = redis
        self.codec = codec
        self.project = project
        self.key_version = key_version
        self.join_key = view.spec.entity.join_key
        self.int_key = view.spec.entity.value_type == "INT64"
        self.script = redis.register_script(SCRIPT)

    def entity_key(self, entity: str) -> tuple[str, bytes]:
        """(the entity id as the store keys it, Feast's key of its row). An INT64 id is keyed
        by its number, so `007` and `7` are one entity, as the runtime reads them."""
        value: str | int = entity
        if self.int_key:
            if not _INT64.fullmatch(entity) or not -(2**63) <= int(entity) < 2**63:
                raise EventError(
                    f"the entity id {entity[:64]!r} is not an INT64 (the FeatureView's entity "
                    "is INT64)",
                    self.join_key,
                )
            value = int(entity)
        key = self.codec.redis_key(self.project, self.join_key, value, self.key_version)
        return str(value), key

    async def apply(self, event: StreamEvent) -> Status:
        (status,) = await self.apply_all([event])
        if isinstance(status, EventError):
            raise status
        return status

    async def apply_all(self, events: list[StreamEvent]) -> list[Status | EventError]:
        """Each event's status, in order, from one pipelined round trip (each script is atomic
        on its own; an event whose fields cannot be used gets its EventError instead)."""
        pipe = self.redis.pipeline(transaction=False)
        out: list[Status | EventError | None] = []
        for event in events:
            try:
                entity, feast_key = self.entity_key(event.entity)
                args = self.plan.args(event, self.codec)
            except EventError as e:
                out.append(e)
                continue
            await self.script(keys=self.plan.keys(entity, feast_key), args=args, client=pipe)
            out.append(None)
        replies = iter(await pipe.execute() if len(pipe) else [])
        statuses: list[Status | EventError] = []
        for item in out:
            if item is not None:
                statuses.append(item)
                continue
            raw = next(replies)[0]
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            if text not in ("ok", "duplicate", "late"):
                raise RuntimeError(f"the window script answered {text!r}")
            statuses.append(text)  # type: ignore[arg-type]
        return statuses
