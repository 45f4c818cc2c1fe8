"""What scoring an ensemble member costs in a worker thread against in line (docs/decisions.md).

    python benchmarks/ensemble_cost.py BUILD_DIR    (BUILD_DIR: examples/fraud/build.py --out)

One row of the fraud example: the primary alone; primary + one member in line; primary on the
loop + the member in a worker thread, awaited through asyncio, or joined by blocking the loop
on its future (what rtml_runtime.ensemble does). Medians of 2,000 calls, in µs.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rtml_runtime.onnx_model import OnnxModel

N = 2000


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


async def measure(primary: OnnxModel, member: OnnxModel) -> dict[str, float]:
    row = [0.5] * len(primary.feature_names)
    pool = ThreadPoolExecutor(max_workers=1)
    out: dict[str, list[float]] = {
        "primary alone": [],
        "in line": [],
        "member in a thread, awaited": [],
        "member in a thread, joined": [],
    }
    for _ in range(N):
        t = time.perf_counter()
        primary.predict_one(row)
        out["primary alone"].append(time.perf_counter() - t)
        t = time.perf_counter()
        primary.predict_one(row)
        member.predict_one(row)
        out["in line"].append(time.perf_counter() - t)
        t = time.perf_counter()
        f = asyncio.wrap_future(pool.submit(member.predict_one, row))
        primary.predict_one(row)
        await asyncio.wait({f}, timeout=1.0)
        out["member in a thread, awaited"].append(time.perf_counter() - t)
        t = time.perf_counter()
        g = pool.submit(member.predict_one, row)
        primary.predict_one(row)
        g.result(timeout=1.0)
        out["member in a thread, joined"].append(time.perf_counter() - t)
    pool.shutdown()
    return {k: median_us(v) for k, v in out.items()}


def main(build: Path) -> None:
    primary = OnnxModel(build / "model.onnx")
    member = OnnxModel(build / "candidate.onnx")
    primary.warmup(50)
    member.warmup(50)
    for name, us in asyncio.run(measure(primary, member)).items():
        print(f"{name}: {us:.1f} µs (median of {N})")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
