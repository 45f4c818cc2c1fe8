"""Build the ranking example from a synthetic catalogue; nothing is downloaded.

    python examples/ranking/build.py [--out DIR] [--users N] [--items N] [--seed S] [--as-of TIME]

Writes into DIR (default: build/ beside this file):
- users.parquet: the FeatureView's source, the 4 user features per user at the "as of" time;
- items.parquet: the catalogue, `item_id` and the 5 item features a ranking request sends;
- model.onnx (+ model.onnx.sha256): a LightGBM lambdarank ranker over the 9 columns of
  model.yaml's spec.features.columns, exported by `onnxmltools.convert_lightgbm` as it comes:
  one float [N, 9] input, one output `variable` [N, 1], no rtml metadata. The file is not edited;
- ranker.txt: the same ranker in LightGBM's own format, to compare its `predict` with the
  runtime's answers;
- request.json: a ranking request (/predict_batch) for one user: 50 catalogue items, topK 10 and
  a filter.

Relevance is graded 0-4 from a hidden function of the user and the item (taste match, price
against the user's budget, popularity, freshness for frequent users) plus noise; the ranker only
sees the 9 features. Values depend only on --seed, --users and --items; --as-of (default: now, to
the hour) only moves the timestamps, which must be recent because Feast drops online rows older
than the view's TTL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import yaml
from onnxmltools import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType
from sklearn.metrics import ndcg_score

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "model.yaml"
CANDIDATES_PER_QUERY = 40
QUERIES_PER_USER = 2
GRADES = np.array([0.5, 1.2, 1.9, 2.6])  # utility cut points: grades 0 (irrelevant) to 4
PARQUET_DTYPES = {"INT64": "int64", "INT32": "int32", "FLOAT": "float32", "DOUBLE": "float64"}
REQUEST_USER = 42
REQUEST_CANDIDATES = 50


def read_manifest(manifest: Path) -> dict[str, Any]:
    """The view's entity, timestamp and features, and the Model's columns and request features."""
    docs = {d["kind"]: d for d in yaml.safe_load_all(manifest.read_text()) if isinstance(d, dict)}
    try:
        view, model = docs["FeatureView"]["spec"], docs["Model"]["spec"]
        return {
            "entity_key": view["entity"]["joinKey"],
            "timestamp": view["source"].get("timestampField", "event_timestamp"),
            "view_features": [(f["name"], f["dtype"]) for f in view["features"]],
            "request_features": list(model["features"]["requestFeatures"]),
            "columns": list(model["features"]["columns"]),
        }
    except KeyError as e:
        sys.exit(f"{manifest} must hold a FeatureView and a Model with features.columns; {e}")


# ---------------------------------------------------------------- synthetic world


def make_users(rng: np.random.Generator, n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [f"user_{i:05d}" for i in range(n)],
            "user_action_affinity": rng.uniform(-1, 1, n),
            "user_comedy_affinity": rng.uniform(-1, 1, n),
            "user_budget": rng.lognormal(3.0, 0.5, n),  # a typical price the user pays, ~20
            "user_sessions_30d": rng.poisson(rng.gamma(2.0, 6.0, n)),
        }
    )


def make_items(rng: np.random.Generator, n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": [f"item_{i:05d}" for i in range(n)],
            # rounded: a request carries them as short JSON numbers
            "item_action": np.round(rng.beta(0.8, 0.8, n), 3),
            "item_comedy": np.round(rng.beta(0.8, 0.8, n), 3),
            "item_price": np.round(rng.lognormal(3.0, 0.7, n), 2),
            "item_popularity": np.round(rng.beta(1.5, 4.0, n), 3),
            "item_age_days": rng.integers(0, 730, n),
        }
    )


def hidden_utility(u: pd.DataFrame, it: pd.DataFrame) -> np.ndarray:
    """What the user would make of the item (row by row); the ranker never sees this."""
    taste = (
        u["user_action_affinity"].to_numpy() * it["item_action"].to_numpy()
        + u["user_comedy_affinity"].to_numpy() * it["item_comedy"].to_numpy()
    )
    budget = u["user_budget"].to_numpy()
    over_budget = np.maximum(it["item_price"].to_numpy() - budget, 0.0) / budget
    frequent = u["user_sessions_30d"].to_numpy() >= 15
    fresh = np.exp(-it["item_age_days"].to_numpy() / 60.0)
    return (
        1.0
        + 1.6 * taste
        - 1.2 * np.minimum(over_budget, 2.0)
        + 1.5 * it["item_popularity"].to_numpy()
        + 1.0 * frequent * fresh
    )


def make_queries(
    rng: np.random.Generator, users: pd.DataFrame, items: pd.DataFrame
) -> tuple[pd.DataFrame, np.ndarray]:
    """QUERIES_PER_USER queries per user, CANDIDATES_PER_QUERY random items each: the rows
    (user features then item features) and a relevance grade 0-4 per row."""
    n_queries = len(users) * QUERIES_PER_USER
    user = np.repeat(np.arange(len(users)), CANDIDATES_PER_QUERY * QUERIES_PER_USER)
    item = rng.integers(0, len(items), n_queries * CANDIDATES_PER_QUERY)
    u = users.iloc[user].reset_index(drop=True)
    it = items.iloc[item].reset_index(drop=True)
    noisy = hidden_utility(u, it) + rng.normal(0.0, 0.3, len(user))
    rows = pd.concat([u.drop(columns="user_id"), it.drop(columns="item_id")], axis=1)
    return rows, np.digitize(noisy, GRADES)


def ndcg_at(k: int, grades: np.ndarray, scores: np.ndarray) -> float:
    n = CANDIDATES_PER_QUERY
    return float(ndcg_score(grades.reshape(-1, n), scores.reshape(-1, n), k=k))


# ---------------------------------------------------------------- model


def export(ranker: lgb.LGBMRanker, width: int) -> onnx.ModelProto:
    """onnxmltools' export with its defaults: the only thing it must be told is the input."""
    return convert_lightgbm(ranker, initial_types=[("input", FloatTensorType([None, width]))])


def onnx_scores(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: x})[0]).ravel()


def ranking_request(
    entity_key: str, users: pd.DataFrame, items: pd.DataFrame, request_features: list[str]
) -> dict[str, Any]:
    """A /predict_batch ranking request: one user, REQUEST_CANDIDATES items, top 10 of those
    at most a year old."""
    instances = [
        {"id": row.item_id, "features": {n: row_value(getattr(row, n)) for n in request_features}}
        for row in items.head(REQUEST_CANDIDATES).itertuples()
    ]
    return {
        entity_key: users["user_id"].iloc[REQUEST_USER],
        "instances": instances,
        "topK": 10,
        "filters": [{"feature": "item_age_days", "max": 365}],
    }


def request_json(request: dict[str, Any]) -> str:
    """The request with one candidate a line, to be read by a person."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in request.items() if k != "instances"]
    rows = ",\n".join(f"    {json.dumps(i)}" for i in request["instances"])
    lines.insert(1, f'  "instances": [\n{rows}\n  ]')
    return "{\n" + ",\n".join(lines) + "\n}\n"


def row_value(value: Any) -> float | int:
    """A JSON number; the runtime casts it to the float32 the ranker was trained on."""
    return int(value) if isinstance(value, int | np.integer) else float(value)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "build", help="output folder")
    p.add_argument("--users", type=int, default=2000, help="users (2 queries each)")
    p.add_argument("--items", type=int, default=5000, help="catalogue items")
    p.add_argument("--seed", type=int, default=7, help="seed of every random draw")
    p.add_argument(
        "--as-of",
        type=datetime.fromisoformat,
        default=datetime.now(UTC).replace(minute=0, second=0, microsecond=0),
        help="timestamp of the user feature rows (default: now, to the hour; UTC if naive)",
    )
    args = p.parse_args(argv)
    if args.users < 100 or args.items < REQUEST_CANDIDATES * 10:
        p.error(f"--users must be at least 100 and --items at least {REQUEST_CANDIDATES * 10}")
    if args.as_of.tzinfo is None:
        args.as_of = args.as_of.replace(tzinfo=UTC)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    sig = read_manifest(MANIFEST)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    users = make_users(rng, args.users)
    items = make_items(rng, args.items)
    known = set(users.columns) | set(items.columns)
    unknown = [c for c in sig["columns"] if c not in known]
    if unknown:
        sys.exit(f"{MANIFEST} spec.features.columns names features build.py does not make: "
                 f"{unknown}")  # fmt: skip
    table = pd.DataFrame({sig["entity_key"]: users["user_id"]})
    table[sig["timestamp"]] = pd.Series(pd.Timestamp(args.as_of), index=users.index).astype(
        "datetime64[us, UTC]"
    )
    for name, dtype in sig["view_features"]:
        table[name] = users[name].to_numpy().astype(PARQUET_DTYPES.get(dtype, "float32"))
    table.to_parquet(out / "users.parquet", index=False)
    items.to_parquet(out / "items.parquet", index=False)
    print(
        f"[1/4] users.parquet: {len(users):,} users, {len(sig['view_features'])} features, as of "
        f"{args.as_of.isoformat()}; items.parquet: {len(items):,} items (seed {args.seed})"
    )

    rows, grades = make_queries(rng, users, items)
    # float32, as the runtime feeds them: the ranker is trained and checked on what it will see
    x = rows[sig["columns"]].to_numpy().astype(np.float32)
    split = len(users) * QUERIES_PER_USER * 4 // 5 * CANDIDATES_PER_QUERY
    n_train_queries = split // CANDIDATES_PER_QUERY
    print(
        f"[2/4] {len(grades) // CANDIDATES_PER_QUERY:,} queries of {CANDIDATES_PER_QUERY} "
        f"candidates, grades 0-4 (share of each: "
        f"{', '.join(f'{s:.0%}' for s in np.bincount(grades, minlength=5) / len(grades))}); "
        f"training on {n_train_queries:,} queries"
    )

    fit_started = time.perf_counter()
    ranker = lgb.LGBMRanker(
        objective="lambdarank",
        n_estimators=150,
        num_leaves=31,
        learning_rate=0.05,
        random_state=args.seed,
        n_jobs=1,
        deterministic=True,
        verbose=-1,
    ).fit(x[:split], grades[:split], group=[CANDIDATES_PER_QUERY] * n_train_queries)
    fit_s = time.perf_counter() - fit_started
    x_test, y_test = x[split:], grades[split:]
    predicted = ranker.predict(x_test)
    print(
        f"[3/4] NDCG@10 on {len(y_test) // CANDIDATES_PER_QUERY:,} held-out queries: ranker "
        f"{ndcg_at(10, y_test, predicted):.3f}, random order "
        f"{ndcg_at(10, y_test, rng.random(len(y_test))):.3f} (150 trees; fit {fit_s:.1f}s)"
    )

    model = export(ranker, x.shape[1])
    drift = np.abs(onnx_scores(model, x_test) - predicted)
    if drift.max() > 1e-4:
        sys.exit(f"model.onnx: ONNX scores differ from LightGBM's by up to {drift.max():.2e}")
    (out / "model.onnx").write_bytes(model.SerializeToString())
    ranker.booster_.save_model(str(out / "ranker.txt"))
    digest = hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    (out / "model.onnx.sha256").write_text(f"{digest}  model.onnx\n")
    request = ranking_request(sig["entity_key"], users, items, sig["request_features"])
    (out / "request.json").write_text(request_json(request))
    width = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    print(
        f"[4/4] model.onnx ({(out / 'model.onnx').stat().st_size // 1024} KiB, sha256 "
        f"{digest[:12]}…): input {model.graph.input[0].name!r} float [N, {width}] -> "
        f"{model.graph.output[0].name!r} [N, 1], as onnxmltools exported it (ONNX vs LightGBM "
        f"max |diff| {drift.max():.1e}); ranker.txt; request.json ({request[sig['entity_key']]}, "
        f"{REQUEST_CANDIDATES} candidates)"
    )
    print(f"built {out} in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
