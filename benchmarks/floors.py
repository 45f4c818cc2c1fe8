"""The floors: what one prediction costs with nothing around it, measured in one process.

    python benchmarks/floors.py --model M [--redis-url U --feast-repo R --view V --features a,b
                                --join-key K --ids FILE]   (run.py pins it to the server's CPU)

Prints JSON: ONNX Runtime `session.run` for one row, a Redis HGET round trip from redis-py,
Feast's online read through the SDK (sync and async), rtml's Redis reader (Feast's codec plus
one pipelined HMGET), the same HMGET through redis-py's async client and through
rtml_runtime.resp, and the time to `import feast`. Medians and p99s in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "servers"))

from fraud_model import Scorer


def _stats(samples_ns: list[int]) -> dict[str, float]:
    a = np.asarray(samples_ns, dtype=np.float64) / 1000
    return {
        "median_us": round(float(np.median(a)), 2),
        "p99_us": round(float(np.percentile(a, 99)), 2),
        "calls": len(samples_ns),
    }


def time_sync(fn: Callable[[], Any], calls: int, warmup: int = 200) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(calls):
        t = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t)
    return _stats(samples)


async def timed(
    fn: Callable[[], Awaitable[Any]], calls: int, warmup: int = 200
) -> dict[str, float]:
    for _ in range(warmup):
        await fn()
    samples = []
    for _ in range(calls):
        t = time.perf_counter_ns()
        await fn()
        samples.append(time.perf_counter_ns() - t)
    return _stats(samples)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--calls", type=int, default=10_000)
    p.add_argument("--redis-url")
    p.add_argument("--feast-repo")
    p.add_argument("--manifest", help="the Model + FeatureView manifest rtml serves")
    p.add_argument("--view")
    p.add_argument("--features")
    p.add_argument("--join-key")
    p.add_argument("--ids", type=Path)
    args = p.parse_args()
    out: dict[str, Any] = {}

    scorer = Scorer(args.model)
    row = {n: random.random() for n in scorer.names}  # noqa: S311 - not for security
    feed = scorer.feed(row)
    out["ort_session_run_one_row"] = time_sync(
        lambda: scorer.session.run([scorer.output], feed), args.calls
    )
    out["ort_feed_and_run_one_row"] = time_sync(lambda: scorer.score(row), args.calls)

    if args.redis_url:
        out |= feature_floors(args)
    print(json.dumps(out))


def feature_floors(args: argparse.Namespace) -> dict[str, Any]:
    import redis

    ids = args.ids.read_text().split()
    pick = random.Random(0).choice  # noqa: S311 - sampling keys, not secrets
    out: dict[str, Any] = {}
    feast_calls = max(500, args.calls // 5)

    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import feast"], check=True)
    out["import_feast_s"] = round(time.perf_counter() - started, 2)

    from feast_lookup import FeastLookup  # imports the Feast SDK

    lookup = FeastLookup(args.feast_repo, args.view, args.features.split(","), args.join_key)
    lookup.read(ids[0])
    out["feast_sdk_get_online_features"] = time_sync(lambda: lookup.read(pick(ids)), feast_calls)
    out["feast_sdk_get_online_features_async"] = asyncio.run(
        timed(lambda: lookup.read_async(pick(ids)), feast_calls)
    )

    from rtml_runtime.config import load_manifest
    from rtml_runtime.feast_codec import field_name
    from rtml_runtime.features import FeastRedisReader

    view = load_manifest(Path(args.manifest)).feature_view
    assert view is not None
    key = FeastRedisReader(view, args.redis_url, project="rtml").key(ids[0])
    client: Any = redis.Redis.from_url(args.redis_url)
    field = field_name(args.view, args.features.split(",")[0])
    out["redis_hget_round_trip"] = time_sync(lambda: client.hget(key, field), args.calls)

    async def rtml_reader() -> dict[str, float]:
        reader = FeastRedisReader(view, args.redis_url, project="rtml")
        try:
            return await timed(lambda: reader.read(pick(ids)), args.calls)
        finally:
            await reader.close()

    async def redis_py_hmget() -> dict[str, float]:
        """The same HMGET (key and 28 fields) through redis-py's async client, which
        rtml_runtime.resp replaced on the hot path."""
        import redis.asyncio as aioredis

        fields = FeastRedisReader(view, args.redis_url, project="rtml").fields
        client: Any = aioredis.Redis.from_url(args.redis_url)
        try:
            return await timed(lambda: client.hmget(key, fields), args.calls)
        finally:
            await client.aclose()

    async def resp_hmget() -> dict[str, float]:
        from rtml_runtime.resp import RespClient

        fields = FeastRedisReader(view, args.redis_url, project="rtml").fields
        client = RespClient(args.redis_url)
        try:
            return await timed(lambda: client.call(b"HMGET", key, *fields), args.calls)
        finally:
            await client.close()

    out["redis_py_async_hmget"] = asyncio.run(redis_py_hmget())
    out["rtml_resp_hmget"] = asyncio.run(resp_hmget())
    out["rtml_feast_redis_reader"] = asyncio.run(rtml_reader())
    return out


if __name__ == "__main__":
    main()
