"""What scoring an ensemble member costs in a worker thread against in line, and both models in
one fused session (docs/decisions.md, "The ensemble").

    python benchmarks/ensemble_cost.py BUILD_DIR [MEMBER]
    (BUILD_DIR: examples/fraud/build.py --out; MEMBER: candidate.onnx, or backup.onnx, the
    detector's logistic member)

One row of the fraud example: the primary alone; primary + one member in line; primary on the
loop + the member in a worker thread, awaited through asyncio, or joined by blocking the loop
on its future (what rtml_runtime.ensemble does while a member has not proved fast); both in the
fused session (rtml_runtime.fused, what it does once the member has). Medians of 2,000 calls,
in µs.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rtml_runtime.fused import FusedModels, fuse
from rtml_runtime.onnx_model import OnnxModel

N = 2000
BLOCK = 200  # calls of one way in a row; the ways take turns, block by block


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


async def measure(primary: OnnxModel, member: OnnxModel, fused: FusedModels) -> dict[str, float]:
    """Each way in blocks of BLOCK calls, the ways taking turns: interleaved call by call, a
    way measured just after a thread's (whose worker still winds down, holding the GIL for a
    moment) was charged ~30 µs that is not its own."""
    row = [0.5] * len(primary.feature_names)
    pool = ThreadPoolExecutor(max_workers=1)

    async def awaited() -> None:
        f = asyncio.wrap_future(pool.submit(member.predict_one, row))
        primary.predict_one(row)
        await asyncio.wait({f}, timeout=1.0)

    async def joined() -> None:
        g = pool.submit(member.predict_one, row)
        primary.predict_one(row)
        g.result(timeout=1.0)

    async def alone() -> None:
        primary.predict_one(row)

    async def in_line() -> None:
        primary.predict_one(row)
        member.predict_one(row)

    async def together() -> None:
        fused.predict_one(row)

    ways = {
        "primary alone": alone,
        "in line": in_line,
        "member in a thread, awaited": awaited,
        "member in a thread, joined": joined,
        "both in the fused session": together,
    }
    out: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(N // BLOCK):
        for name, way in ways.items():
            for _ in range(BLOCK):
                t = time.perf_counter()
                await way()
                out[name].append(time.perf_counter() - t)
    pool.shutdown()
    return {k: median_us(v) for k, v in out.items()}


def main(build: Path, member_file: str) -> None:
    primary = OnnxModel(build / "model.onnx", keep_bytes=True)
    member = OnnxModel(build / member_file, keep_bytes=True)
    primary.warmup(50)
    member.warmup(50)
    fused = fuse([primary, member])
    if fused is None:
        raise SystemExit(f"model.onnx and {member_file} could not be fused (see the log)")
    for name, us in asyncio.run(measure(primary, member, fused)).items():
        print(f"{name}: {us:.1f} µs (median of {N})")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "candidate.onnx")
