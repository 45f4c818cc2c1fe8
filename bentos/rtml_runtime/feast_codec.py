"""Feast's own key and value encoding for its Redis online store, without importing the SDK.

`import feast` takes ~5 s on this machine (its package `__init__` pulls in the whole SDK:
pandas, the offline stores, on-demand views), which would dominate a pod's time to ready. The
Redis read path needs only three files of Feast: the `Value` and `EntityKey` protobufs and
`infra/key_encoding_utils.py`. They are loaded here from Feast's installed package by path,
under temporary stand-ins for their parent packages, then the stand-ins are removed so that a
later real `import feast` (the SQLite path, registration) loads the SDK normally; protobuf
accepts the identical descriptor files being registered again. Measured: 35 ms instead of ~5 s.

What Feast's `online_stores/helpers.py` adds on top (`_redis_key`: the serialised entity key
followed by the project name; `_mmh3`: a little-endian 32-bit murmur3 of "view:feature") is two
lines, restated below because that module imports the SDK; tests/unit/runtime/test_feast_codec.py
checks both against Feast's own functions so any drift fails a test.
"""

from __future__ import annotations

import importlib.util
import struct
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mmh3

_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")


@dataclass(frozen=True)
class FeastCodec:
    entity_key_cls: Any
    value_cls: Any
    serialize_entity_key: Any
    _float_tag: int = field(init=False, default=-1)
    _double_tag: int = field(init=False, default=-1)
    _int64_tag: int = field(init=False, default=-1)

    def redis_key(self, project: str, join_key: str, value: str | int, version: int = 3) -> bytes:
        proto_value = (
            self.value_cls(int64_val=value)
            if isinstance(value, int)
            else self.value_cls(string_val=value)
        )
        key = self.entity_key_cls(join_keys=[join_key], entity_values=[proto_value])
        return bytes(self.serialize_entity_key(key, entity_key_serialization_version=version)) + (
            project.encode("utf-8")
        )

    def __post_init__(self) -> None:
        fields = self.value_cls.DESCRIPTOR.fields_by_name
        # The first byte of a serialised Value holding just a float, double or int64: the
        # field number from Feast's own descriptor, and the protobuf wire type (5 fixed32,
        # 1 fixed64, 0 varint).
        object.__setattr__(self, "_float_tag", fields["float_val"].number << 3 | 5)
        object.__setattr__(self, "_double_tag", fields["double_val"].number << 3 | 1)
        object.__setattr__(self, "_int64_tag", fields["int64_val"].number << 3 | 0)

    @property
    def float_tag(self) -> int:
        """The first byte of a serialised Value holding a float (what a writer prefixes)."""
        return self._float_tag

    @property
    def int64_tag(self) -> int:
        """The first byte of a serialised Value holding an int64."""
        return self._int64_tag

    def parse_value(self, blob: bytes) -> Any:
        """A Feast `Value` as a Python value (None for an unset or null value).

        FLOAT, DOUBLE and INT64 features — nearly every model input — are one protobuf field
        each; they are decoded straight from the wire format (0.2-0.4 µs) instead of through a
        protobuf message (1.2 µs; 27 of them per fraud read). Anything else, and any blob that
        is not exactly one such field, goes through Feast's `Value` class.
        tests/unit/runtime/test_feast_codec.py compares both ways on random and edge values.
        """
        size = len(blob)
        if size == 5 and blob[0] == self._float_tag:
            return _F32.unpack_from(blob, 1)[0]
        if size == 9 and blob[0] == self._double_tag:
            return _F64.unpack_from(blob, 1)[0]
        if size >= 2 and blob[0] == self._int64_tag:
            value, end = _varint(blob, 1)
            if end == size:
                return value - (1 << 64) if value >= 1 << 63 else value
        proto = self.value_cls()
        proto.ParseFromString(blob)
        kind = proto.WhichOneof("val")
        return None if kind is None or kind == "null_val" else getattr(proto, kind)


def _varint(blob: bytes, start: int) -> tuple[int, int]:
    """The protobuf varint at `start`: (value, index after it), or (0, -1) when it runs off the
    end of `blob` or past the 10 bytes a 64-bit varint may take."""
    value = shift = 0
    for i in range(start, min(len(blob), start + 10)):
        byte = blob[i]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i + 1
    return 0, -1


def timestamp_seconds(blob: bytes) -> int:
    """`seconds` of a serialised google.protobuf.Timestamp (field 1, a varint; 0 when absent),
    as Feast stores a row's event time, without protobuf classes."""
    if not blob or blob[0] != 0x08:
        return 0
    return _varint(blob, 1)[0]


def field_name(view: str, feature: str) -> bytes:
    """The Redis hash field Feast stores a feature under."""
    return struct.pack("<Q", mmh3.hash(f"{view}:{feature}", signed=False))[:4]


def _load_isolated() -> FeastCodec:
    spec = importlib.util.find_spec("feast")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("feast is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    added: list[str] = []

    def package(name: str, path: Path) -> None:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module
        added.append(name)

    def load(name: str, path: Path) -> Any:
        file_spec = importlib.util.spec_from_file_location(name, path)
        assert file_spec is not None
        assert file_spec.loader is not None
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[name] = module
        added.append(name)
        file_spec.loader.exec_module(module)
        return module

    try:
        package("feast", root)
        package("feast.protos", root / "protos")
        package("feast.protos.feast", root / "protos/feast")
        package("feast.protos.feast.types", root / "protos/feast/types")
        value = load("feast.protos.feast.types.Value_pb2", root / "protos/feast/types/Value_pb2.py")
        entity = load(
            "feast.protos.feast.types.EntityKey_pb2", root / "protos/feast/types/EntityKey_pb2.py"
        )
        package("feast.infra", root / "infra")
        kenc = load("feast.infra.key_encoding_utils", root / "infra/key_encoding_utils.py")
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return FeastCodec(entity.EntityKey, value.Value, kenc.serialize_entity_key)


_CODEC: FeastCodec | None = None


def codec() -> FeastCodec:
    """Feast's codec: the real SDK's when it is already imported, else the isolated one."""
    global _CODEC  # noqa: PLW0603 - one codec per process, loaded once
    if _CODEC is None:
        if "feast" in sys.modules and hasattr(sys.modules["feast"], "FeatureStore"):
            from feast.infra.key_encoding_utils import serialize_entity_key
            from feast.protos.feast.types.EntityKey_pb2 import EntityKey
            from feast.protos.feast.types.Value_pb2 import Value

            _CODEC = FeastCodec(EntityKey, Value, serialize_entity_key)
        else:
            _CODEC = _load_isolated()
    return _CODEC
