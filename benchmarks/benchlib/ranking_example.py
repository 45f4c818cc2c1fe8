"""The examples benchmarks/ranking.py ranks with: each built into a temp dir with its own build
script as a `Fixture` that the `rtml-redis` server config and `register_features` take, and N
ranking candidates for one entity.

- `ranking` (examples/ranking): the LightGBM lambdarank ranker as onnxmltools exported it, one
  float [N, 9] input served through spec.features.columns; 4 user features read from Redis and
  5 item features per candidate, the candidates being the catalogue's first N items;
- `fraud` (examples/fraud): 27 card features read from Redis and 3 request features per
  candidate, synthetic transactions (what the earlier runs measured).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from benchlib.fixture import REPO, Fixture, build_fixture

EXAMPLES = ("ranking", "fraud")
RANKING = REPO / "examples" / "ranking"
LONG_SLO = dict.fromkeys(["p99LatencyMs", "timeoutMs", "featureBudgetMs"], 10_000)


def example_fixture(name: str, root: Path, log: Callable[[str], None]) -> Fixture:
    return build_fixture(root, log) if name == "fraud" else _ranking_fixture(root, log)


def example_candidates(name: str, fixture: Fixture, n: int) -> list[dict[str, Any]]:
    return fraud_candidates(n) if name == "fraud" else _catalogue(fixture, n)


def fraud_candidates(n: int) -> list[dict[str, Any]]:
    """N distinct candidates' request features (the fraud example's three)."""
    return [
        {
            "id": f"item-{i}",
            "features": {
                "amount": round(5 + (i * 37) % 900 + i / 1000, 3),
                "merchant_risk": round((i * 13 % 100) / 100, 2),
                "hour_of_day": i % 24,
            },
        }
        for i in range(n)
    ]


def _catalogue(fixture: Fixture, n: int) -> list[dict[str, Any]]:
    import pandas as pd

    items = pd.read_parquet(fixture.model_path.parent / "items.parquet")
    if n > len(items):
        raise ValueError(f"--candidates {n} is over the catalogue's {len(items)} items")
    items = items.iloc[:n]
    names = [c for c in items.columns if c != "item_id"]
    features = items[names].to_dict("records")
    return [{"id": i, "features": f} for i, f in zip(items["item_id"], features, strict=True)]


def _ranking_fixture(root: Path, log: Callable[[str], None]) -> Fixture:
    """examples/ranking built into ROOT; its manifest pointed at the build, the artifact pinned
    to build.py's digest and deadlines far above any latency seen (as build_fixture does)."""
    build = root / "build"
    log(f"building the ranking example into {build} (examples/ranking/build.py)")
    subprocess.run(
        [sys.executable, str(RANKING / "build.py"), "--out", str(build)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    docs = [d for d in yaml.safe_load_all((RANKING / "model.yaml").read_text()) if d]
    view = next(d for d in docs if d["kind"] == "FeatureView")
    model = next(d for d in docs if d["kind"] == "Model")
    view["spec"]["source"]["path"] = f"file://{build / 'users.parquet'}"
    model["spec"]["artifact"] = {
        "uri": f"file://{build / 'model.onnx'}",
        "sha256": (build / "model.onnx.sha256").read_text().split()[0],
    }
    model["spec"]["slo"] = LONG_SLO
    manifest = root / "rtml-features.yaml"
    manifest.write_text(yaml.safe_dump_all([view, model], sort_keys=False))
    join_key = view["spec"]["entity"]["joinKey"]
    import pandas as pd

    request = json.loads((build / "request.json").read_text())
    users = [str(u) for u in pd.read_parquet(build / "users.parquet")[join_key]]
    entity_ids = [request[join_key]] + [u for u in users if u != request[join_key]]
    ids_file = root / "entity_ids.txt"
    ids_file.write_text("\n".join(entity_ids) + "\n")
    return Fixture(
        root=root,
        model_path=build / "model.onnx",
        manifest=manifest,
        plain_manifest=manifest,  # unused here: ranking always reads the entity's features
        view_name=view["metadata"]["name"].replace("-", "_"),
        feature_names=[f["name"] for f in view["spec"]["features"]],
        join_key=join_key,
        entity_ids=entity_ids,  # the first is request.json's user, whom the benchmark ranks for
        ids_file=ids_file,
        plain_body="",
        entity_body="",
        store_path=root / "feature_store",
    )
