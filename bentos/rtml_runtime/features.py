"""Reading an entity's online features through Feast, under a budget, behind an L1 cache.

Two readers, one interface:
- `FeastSdkReader`: `FeatureStore.get_online_features` in a worker thread. Works with every
  online store (SQLite on one machine); the thread keeps the event loop free.
- `FeastRedisReader`: the hot path for the Redis online store. It reads Feast's own layout with
  Feast's own code (feast_codec.py: the entity key serialised by Feast's
  `key_encoding_utils`, values decoded as Feast `Value` protobufs) but issues one `HMGET` on a
  pipelined connection (resp.py, which says why not `redis.asyncio`) instead of going through
  `get_online_features`' per-call planning (request validation, response building, protobuf
  conversions), which the issue's measurements put at ~0.5 ms of Python per read
  (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from rtml.api.common import parse_duration
from rtml.api.featureview import FeatureView
from rtml.features.translate import feast_name
from rtml_runtime.feast_codec import codec, field_name, timestamp_seconds

FeatureValues = dict[str, Any]


class FeatureReader(Protocol):
    async def read(self, entity_id: str) -> FeatureValues | None:
        """The entity's features, or None when the store has no row for it."""

    async def close(self) -> None: ...


def feast_view_name(view: FeatureView) -> str:
    """The name the view is registered under in Feast (one rule, in rtml.features)."""
    return feast_name(view)


class FeastSdkReader:
    """Any Feast online store, through the SDK, off the event loop."""

    def __init__(self, store: Any, view: FeatureView) -> None:
        self.store = store
        self.view = view
        name = feast_view_name(view)
        self.refs = [f"{name}:{f.name}" for f in view.spec.served_features]
        self.names = [f.name for f in view.spec.served_features]
        self.join_key = view.spec.entity.join_key
        self.int_key = view.spec.entity.value_type == "INT64"

    def _read_sync(self, entity_id: str) -> FeatureValues | None:
        key: Any = int(entity_id) if self.int_key else entity_id
        out = self.store.get_online_features(
            features=self.refs, entity_rows=[{self.join_key: key}]
        ).to_dict()
        values = {n: out[n][0] for n in self.names if n in out}
        if all(v is None for v in values.values()):
            return None
        return values

    async def read(self, entity_id: str) -> FeatureValues | None:
        return await asyncio.to_thread(self._read_sync, entity_id)

    async def close(self) -> None:
        return None


class _FeastLayout:
    """What both direct readers share: Feast's codec and the view's entity key and TTL."""

    def __init__(self, view: FeatureView, project: str, key_version: int) -> None:
        self.codec = codec()
        self.view = view
        self.project = project
        self.key_version = key_version
        self.join_key = view.spec.entity.join_key
        self.int_key = view.spec.entity.value_type == "INT64"
        self.ttl_s = parse_duration(view.spec.ttl)

    def entity_key(self, entity_id: str, project: str) -> bytes:
        """Feast's serialised entity key, followed by `project` (Redis) or nothing (SQLite)."""
        value: str | int = int(entity_id) if self.int_key else entity_id
        return self.codec.redis_key(project, self.join_key, value, self.key_version)


class FeastRedisReader(_FeastLayout):
    """Feast's Redis layout, read with Feast's serialisation and one pipelined HMGET.

    Needs no FeatureStore (and so no SDK import): the project, the key serialisation version
    and the view come from the runtime's config, as the operator registered them.
    """

    def __init__(
        self, view: FeatureView, redis_url: str, project: str, key_version: int = 3
    ) -> None:
        from rtml_runtime.resp import RespClient

        super().__init__(view, project, key_version)
        name = feast_view_name(view)
        self.names = [f.name for f in view.spec.served_features]
        self.fields = [field_name(name, n) for n in self.names] + [f"_ts:{name}".encode()]
        self.client = RespClient(redis_url, connect_timeout_s=1.0)
        # HMGET <key> <fields...>: everything but the key is the same on every read.
        self._head = b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(self.fields))
        self._tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in self.fields)

    def key(self, entity_id: str) -> bytes:
        return self.entity_key(entity_id, self.project)

    async def read(self, entity_id: str) -> FeatureValues | None:
        key = self.key(entity_id)
        raw = await self.client.send(b"%s$%d\r\n%s\r\n%s" % (self._head, len(key), key, self._tail))
        *values, ts_raw = raw
        if ts_raw is None:
            return None
        if self.ttl_s > 0 and time.time() - timestamp_seconds(ts_raw) > self.ttl_s:
            return None  # older than the view's TTL: Feast would not serve it either
        parse = self.codec.parse_value
        return {n: None if b is None else parse(b) for n, b in zip(self.names, values, strict=True)}

    async def close(self) -> None:
        await self.client.close()


class FeastSqliteReader(_FeastLayout):
    """Feast's SQLite online store (one machine), read with Feast's key serialisation.

    One indexed SELECT on a read-only connection, inline: a local SQLite lookup takes tens of
    microseconds, while `get_online_features` in a worker thread measured 6-28 ms per call
    here — past any realistic feature budget.
    """

    def __init__(
        self, view: FeatureView, db_path: Path, project: str, key_version: int = 3
    ) -> None:
        super().__init__(view, project, key_version)
        self.names = {f.name for f in view.spec.served_features}
        table = f"{project}_{feast_view_name(view)}".replace('"', '""')
        # The table name is Feast's (project + view name, validated identifiers), quoted.
        self.sql = f'SELECT feature_name, value, event_ts FROM "{table}" WHERE entity_key = ?'  # noqa: S608
        self.conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, check_same_thread=False)

    async def read(self, entity_id: str) -> FeatureValues | None:
        rows = self.conn.execute(self.sql, (self.entity_key(entity_id, ""),)).fetchall()
        if not rows:
            return None
        if self.ttl_s > 0:
            newest = max(_utc_seconds(r[2]) for r in rows)
            if time.time() - newest > self.ttl_s:
                return None
        parse = self.codec.parse_value
        return {name: parse(blob) for name, blob, _ in rows if name in self.names}

    async def close(self) -> None:
        self.conn.close()


def _utc_seconds(value: Any) -> float:
    """Feast's event_ts: epoch seconds (feast 0.67), or a naive UTC timestamp (older stores)."""
    if isinstance(value, int | float):
        return float(value)
    text = str(value)
    if text.replace(".", "", 1).isdigit():
        return float(text)
    stamp = value if isinstance(value, datetime) else datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def merge_features(
    view: FeatureView | None,
    stored: Mapping[str, Any] | None,
    request: Mapping[str, Any],
) -> tuple[dict[str, Any], bool]:
    """View features (defaults for missing ones) overlaid with request features.

    Returns the merged values and whether any default had to be used (a degraded answer).
    """
    merged: dict[str, Any] = {}
    used_default = False
    if view is not None:
        for f in view.spec.served_features:
            value = stored.get(f.name) if stored else None
            if value is None:
                value = f.default
                used_default = True
            merged[f.name] = value
    merged.update(request)
    return merged, used_default
