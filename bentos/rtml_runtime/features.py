"""Reading an entity's online features through Feast, under a budget, behind an L1 cache.

Two readers, one interface:
- `FeastSdkReader`: `FeatureStore.get_online_features` in a worker thread. Works with every
  online store (SQLite on one machine); the thread keeps the event loop free.
- `FeastRedisReader`: the hot path for the Redis online store. It reads Feast's own layout with
  Feast's own code — the entity key serialised by `feast.infra.key_encoding_utils` (through
  `_redis_key`), field names hashed by Feast's `_mmh3`, values decoded as Feast `ValueProto`s —
  but issues one `HMGET` on a pooled `redis.asyncio` connection instead of going through
  `get_online_features`' per-call planning (request validation, response building, protobuf
  conversions), which measured ~0.5 ms of Python per read (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Protocol

from rtml.api.common import parse_duration
from rtml.api.featureview import FeatureView

FeatureValues = dict[str, Any]


class FeatureReader(Protocol):
    async def read(self, entity_id: str) -> FeatureValues | None:
        """The entity's features, or None when the store has no row for it."""

    async def close(self) -> None: ...


def feast_view_name(view: FeatureView) -> str:
    """Feast names may not contain dashes; Kubernetes names may."""
    return view.metadata.name.replace("-", "_")


def _entity_value(view: FeatureView, entity_id: str) -> Any:
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    if view.spec.entity.value_type == "INT64":
        return ValueProto(int64_val=int(entity_id))
    return ValueProto(string_val=entity_id)


def _decode(value: Any) -> Any:
    kind = value.WhichOneof("val")
    return None if kind is None or kind == "null_val" else getattr(value, kind)


class FeastSdkReader:
    """Any Feast online store, through the SDK, off the event loop."""

    def __init__(self, store: Any, view: FeatureView) -> None:
        self.store = store
        self.view = view
        name = feast_view_name(view)
        self.refs = [f"{name}:{f.name}" for f in view.spec.features]
        self.names = [f.name for f in view.spec.features]
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


class FeastRedisReader:
    """Feast's Redis layout, read with Feast's serialisation and one pooled async HMGET."""

    def __init__(self, store: Any, view: FeatureView, redis_url: str) -> None:
        import redis.asyncio as aioredis
        from feast.infra.online_stores.helpers import _mmh3, _redis_key

        self._redis_key = _redis_key
        self.view = view
        self.config = store.config
        self.project = store.project
        self.serialization = getattr(self.config, "entity_key_serialization_version", 3)
        name = feast_view_name(view)
        self.names = [f.name for f in view.spec.features]
        self.fields = [_mmh3(f"{name}:{n}") for n in self.names] + [f"_ts:{name}".encode()]
        self.ttl_s = parse_duration(view.spec.ttl)
        self.client: Any = aioredis.Redis.from_url(redis_url, socket_connect_timeout=1.0)

    def _key(self, entity_id: str) -> bytes:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto

        proto = EntityKeyProto(
            join_keys=[self.view.spec.entity.join_key],
            entity_values=[_entity_value(self.view, entity_id)],
        )
        return bytes(self._redis_key(self.project, proto, self.serialization))

    async def read(self, entity_id: str) -> FeatureValues | None:
        from feast.protos.feast.types.Value_pb2 import Value as ValueProto
        from google.protobuf.timestamp_pb2 import Timestamp

        raw = await self.client.hmget(self._key(entity_id), self.fields)
        *values, ts_raw = raw
        if ts_raw is None:
            return None
        if self.ttl_s > 0:
            ts = Timestamp()
            ts.ParseFromString(ts_raw)
            if time.time() - ts.seconds > self.ttl_s:
                return None  # older than the view's TTL: Feast would not serve it either
        out: FeatureValues = {}
        for name, blob in zip(self.names, values, strict=True):
            if blob is None:
                out[name] = None
                continue
            proto = ValueProto()
            proto.ParseFromString(blob)
            out[name] = _decode(proto)
        return out

    async def close(self) -> None:
        await self.client.aclose()


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
        for f in view.spec.features:
            value = stored.get(f.name) if stored else None
            if value is None:
                value = f.default
                used_default = True
            merged[f.name] = value
    merged.update(request)
    return merged, used_default
