"""Our Redis key and field encoding must equal Feast's own, byte for byte."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.unit


def test_isolated_codec_matches_feast_and_leaves_the_sdk_importable() -> None:
    # A fresh interpreter: the isolated loader only runs when the SDK is not imported yet.
    script = textwrap.dedent("""
        import sys
        from rtml_runtime.feast_codec import codec, field_name
        c = codec()
        assert "feast" not in sys.modules, "the isolated codec must not leave feast imported"
        import feast  # the real SDK still imports after the isolated load
        from feast.infra.online_stores.helpers import _mmh3, _redis_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value
        for join_key, value in (("card_id", "c-001"), ("user", "ü"), ("id", 42), ("id", -7)):
            v = Value(int64_val=value) if isinstance(value, int) else Value(string_val=value)
            ours = c.redis_key("rtml", join_key, value, 3)
            theirs = _redis_key("rtml", EntityKey(join_keys=[join_key], entity_values=[v]), 3)
            assert ours == theirs, (join_key, value)
        for view, feat in (("card_features", "txn_count_1h"), ("v", "ü")):
            assert field_name(view, feat) == _mmh3(f"{view}:{feat}")
        assert c.parse_value(Value(double_val=1.5).SerializeToString()) == 1.5
        assert c.parse_value(Value().SerializeToString()) is None
        assert feast.FeatureStore is not None
        print("ok")
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_timestamp_seconds_decodes_protobuf_timestamps() -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    from rtml_runtime.feast_codec import timestamp_seconds

    for seconds in (0, 1, 127, 128, 1_764_000_000, 2**33):
        blob = Timestamp(seconds=seconds, nanos=5).SerializeToString()
        assert timestamp_seconds(blob) == seconds


def test_the_wire_fast_path_decodes_exactly_what_feasts_value_class_does() -> None:
    import math
    import random

    from rtml_runtime.feast_codec import codec

    c = codec()
    value = c.value_cls
    rng = random.Random(7)  # noqa: S311 - test values, not secrets
    floats = [0.0, -0.0, 1.5, -2.25, 3.4e38, 1e-45, math.inf, -math.inf]
    ints = [0, 1, -1, 127, 128, 300, 2**31, -(2**31), 2**63 - 1, -(2**63)]
    cases = (
        [value(float_val=x) for x in floats + [rng.uniform(-1e6, 1e6) for _ in range(300)]]
        + [value(double_val=x) for x in floats + [rng.uniform(-1e12, 1e12) for _ in range(300)]]
        + [
            value(int64_val=x)
            for x in ints + [rng.randint(-(2**63), 2**63 - 1) for _ in range(300)]
        ]
        + [
            value(int32_val=-5),
            value(bool_val=True),
            value(string_val="x"),
            value(),
            value(null_val=0),
        ]
    )
    for case in cases:
        blob = case.SerializeToString()
        kind = case.WhichOneof("val")
        expected = None if kind in (None, "null_val") else getattr(case, kind)
        got = c.parse_value(blob)
        assert got == expected, (case, blob, got)
        assert type(got) is type(expected), (case, blob, got)
    nan = c.parse_value(value(float_val=math.nan).SerializeToString())
    assert math.isnan(nan)
    # Not exactly one field (trailing bytes, a truncated varint): the protobuf path decides.
    two_fields = value(float_val=1.0).SerializeToString() + value(float_val=2.0).SerializeToString()
    proto = value()
    proto.ParseFromString(two_fields)
    assert c.parse_value(two_fields) == proto.float_val == 2.0
