"""Build the fraud example from synthetic card transactions; nothing is downloaded.

    python examples/fraud/build.py [--out DIR] [--rows N] [--seed S] [--as-of ISO-TIME]

Writes into DIR (default: build/ beside this file):
- features.parquet: the 27 FeatureView features per card at the "as of" time (plus older
  snapshots of some cards, so materialisation has to pick the latest row);
- model.onnx (+ model.onnx.sha256): gradient-boosted trees over the 27 view features and the 3
  request features; 30 named float32 [N, 1] inputs, concatenated inside the graph, one output
  `score` = P(fraud), and the input order as JSON in the metadata property `rtml.features`;
- backup.onnx: a logistic regression with the same signature, for `fallback.mode: model`;
- holdout.parquet: the labelled transactions no model trained on (the 30 inputs by name and the
  label `fraud`), for `rtml optimize --data` (docs/optimize.md);
- challengers for Experiments, with the same signature (candidates.py): candidate.onnx (trees
  retrained with another seed), slow.onnx (plus a genuinely heavier branch), erroring.onnx
  (fails on real transactions) and shifted.onnx (scores raised by 0.3).

The feature names, their order and their dtypes come from model.yaml beside this file. Values,
labels and models depend only on --seed and --rows; --as-of (default: now, to the hour) only moves
the timestamps, which must be recent because Feast drops online rows older than the view's TTL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import yaml
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
import candidates  # beside this script, which is run as a file

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "model.yaml"
HOUR = 3600.0
DAY = 24 * HOUR
WINDOWS = {"1h": HOUR, "24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY}
N_MERCHANTS = 2000
N_COUNTRIES = 40
HIGH_RISK = 0.3  # merchant_risk above this counts as a high-risk merchant
OLD_SNAPSHOT_AGE = 2 * DAY  # older feature rows, which materialisation must not pick
# skl2onnx 1.20 cannot convert HistGradientBoostingClassifier with onnx 1.23 (it passes numpy
# booleans into an `ints` attribute), so the model is sklearn's classic GradientBoostingClassifier.
ONNX_OPSETS = {"": 17, "ai.onnx.ml": 3}
PARQUET_DTYPES = {"INT64": "int64", "INT32": "int32", "FLOAT": "float32", "DOUBLE": "float64"}


@dataclass(frozen=True)
class Signature:
    entity_key: str
    timestamp_field: str
    view_features: list[tuple[str, str]]  # (name, dtype) in the view's order
    request_features: list[str]

    @property
    def inputs(self) -> list[str]:
        return [n for n, _ in self.view_features] + self.request_features


def read_signature(manifest: Path) -> Signature:
    """The view's features and the Model's request features, in order, from the manifest."""
    docs = {d["kind"]: d for d in yaml.safe_load_all(manifest.read_text()) if isinstance(d, dict)}
    try:
        view, model = docs["FeatureView"]["spec"], docs["Model"]["spec"]
        return Signature(
            entity_key=view["entity"]["joinKey"],
            timestamp_field=view["source"].get("timestampField", "event_timestamp"),
            view_features=[(f["name"], f["dtype"]) for f in view["features"]],
            request_features=list(model["features"]["requestFeatures"]),
        )
    except KeyError as e:
        sys.exit(f"{manifest} must hold a FeatureView and a Model with features; missing {e}")


# ---------------------------------------------------------------- synthetic world


def make_cards(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Each card's hidden behaviour; about 6% are compromised and behave differently."""
    compromised = rng.random(n) < 0.06
    age_days = rng.gamma(2.0, 400.0, n)
    age_days[compromised & (rng.random(n) < 0.5)] /= 10  # half of them are fresh accounts
    age_days = np.clip(age_days, 1, 5000).astype(np.int64)
    return pd.DataFrame(
        {
            "card_id": [f"card_{i:05d}" for i in range(n)],
            "compromised": compromised,
            "activity": rng.lognormal(0.0, 0.8, n) * np.where(compromised, 2.0, 1.0),
            "typical_amount": rng.lognormal(3.6, 0.6, n),
            "p_foreign": rng.beta(1, 30, n) + 0.35 * compromised,
            "p_night": rng.beta(1.5, 15, n) + 0.25 * compromised,
            "p_online": np.clip(rng.beta(2, 5, n) + 0.3 * compromised, 0, 1),
            "p_declined": 0.02 + 0.10 * compromised,
            "chargebacks_90d": rng.poisson(0.05 + 0.8 * compromised),
            "account_age_days": age_days,
        }
    )


def pick_merchants(
    rng: np.random.Generator, risk: np.ndarray, risky_card: np.ndarray
) -> np.ndarray:
    """Merchants for a batch of transactions; compromised cards lean to risky merchants."""
    merchants = rng.integers(0, len(risk), risky_card.size)
    risky = np.flatnonzero(risk > HIGH_RISK)
    lean = risky_card & (rng.random(risky_card.size) < 0.4)
    merchants[lean] = rng.choice(risky, lean.sum())
    return merchants


def make_history(
    rng: np.random.Generator, cards: pd.DataFrame, merchant_risk: np.ndarray, rows: int
) -> pd.DataFrame:
    """`rows` past transactions over 32 days; `age_s` is seconds before the "as of" time."""
    weights = cards["activity"].to_numpy()
    card = rng.choice(len(cards), rows, p=weights / weights.sum())
    c = cards.iloc[card]
    bad = c["compromised"].to_numpy()
    burst = bad & (rng.random(rows) < 0.4)  # a compromised card is used a lot, lately
    age = np.where(burst, rng.uniform(0, DAY, rows), rng.uniform(0, 32 * DAY, rows))
    foreign = rng.random(rows) < c["p_foreign"].to_numpy()
    merchant = pick_merchants(rng, merchant_risk, bad)
    return pd.DataFrame(
        {
            "card": card,
            "age_s": age,
            "amount": c["typical_amount"].to_numpy()
            * rng.lognormal(0.0, 0.5, rows)
            * np.where(burst, 2.5, 1.0),
            "merchant": merchant,
            "merchant_risk": merchant_risk[merchant],
            "country": np.where(foreign, rng.integers(1, N_COUNTRIES, rows), 0),
            "foreign": foreign,
            "night": rng.random(rows) < c["p_night"].to_numpy(),
            "online": rng.random(rows) < c["p_online"].to_numpy(),
            "declined": rng.random(rows) < c["p_declined"].to_numpy(),
        }
    )


def card_features(history: pd.DataFrame, cards: pd.DataFrame, age_s: float) -> pd.DataFrame:
    """Every view feature of every card, computed from the transactions before `age_s` ago."""
    past = history[history["age_s"] >= age_s].assign(rel=lambda d: d["age_s"] - age_s)
    index = pd.RangeIndex(len(cards))
    out = pd.DataFrame(index=index)

    def per_card(window: str) -> Any:
        return past[past["rel"] < WINDOWS[window]].groupby("card")

    for w in WINDOWS:
        out[f"txn_count_{w}"] = per_card(w).size()
    for w in ("24h", "7d", "30d"):
        amounts = per_card(w)["amount"]
        out[f"amount_mean_{w}"] = amounts.mean()
        out[f"amount_max_{w}"] = amounts.max()
        out[f"distinct_merchants_{w}"] = per_card(w)["merchant"].nunique()
        if w != "24h":
            out[f"amount_std_{w}"] = amounts.std(ddof=0)
    out["amount_sum_24h"] = per_card("24h")["amount"].sum()
    month = per_card("30d")
    out["distinct_countries_30d"] = month["country"].nunique()
    for flag in ("night", "foreign", "online"):
        out[f"{flag}_share_30d"] = month[flag].mean()
    out["high_risk_merchant_share_30d"] = month["merchant_risk"].apply(
        lambda r: float((r > HIGH_RISK).mean())
    )
    out["merchant_risk_mean_30d"] = month["merchant_risk"].mean()
    out["declined_count_7d"] = per_card("7d")["declined"].sum()
    out = out.reindex(index).fillna(0.0)
    out["hours_since_last_txn"] = (past.groupby("card")["rel"].min() / HOUR).reindex(index)
    out["hours_since_last_txn"] = out["hours_since_last_txn"].fillna(720.0)
    out["chargeback_count_90d"] = cards["chargebacks_90d"].to_numpy()
    out["account_age_days"] = cards["account_age_days"].to_numpy() - int(age_s // DAY)
    ratio = out["amount_mean_24h"] / out["amount_mean_30d"].where(out["amount_mean_30d"] > 0)
    out["amount_mean_ratio_24h_30d"] = ratio.fillna(1.0)
    return out


def make_scored(
    rng: np.random.Generator, cards: pd.DataFrame, merchant_risk: np.ndarray, rows: int
) -> pd.DataFrame:
    """Transactions to score after the "as of" time: request features and a fraud label."""
    weights = cards["activity"].to_numpy()
    card = rng.choice(len(cards), rows, p=weights / weights.sum())
    c = cards.iloc[card]
    bad = c["compromised"].to_numpy()
    night = rng.random(rows) < c["p_night"].to_numpy()
    ratio = rng.lognormal(0.0, 0.6, rows) * np.where(bad & (rng.random(rows) < 0.5), 2.5, 1.0)
    risk = merchant_risk[pick_merchants(rng, merchant_risk, bad)]
    # Thresholds and an interaction: what trees learn and a linear backup only approximates.
    logit = (
        -4.9
        + 2.2 * bad
        + 2.5 * (risk > 0.35)
        + 1.5 * (bad & night)
        + 0.3 * night
        + 1.5 * (ratio > 2.5)
        + 0.4 * (c["chargebacks_90d"].to_numpy() > 0)
    )
    return pd.DataFrame(
        {
            "card": card,
            "amount": np.round(c["typical_amount"].to_numpy() * ratio, 2),
            "merchant_risk": risk,
            "hour_of_day": np.where(night, rng.integers(0, 6, rows), rng.integers(6, 24, rows)),
            "fraud": rng.random(rows) < 1.0 / (1.0 + np.exp(-logit)),
        }
    )


# ---------------------------------------------------------------- ONNX


def to_onnx(estimator: Any, inputs: list[str], name: str) -> onnx.ModelProto:
    """The estimator as ONNX: one float32 [N, 1] input per feature, concatenated in the graph
    (in `inputs` order), and one output `score` [N] = the probability of class 1."""
    wide = convert_sklearn(
        estimator,
        name=name,
        initial_types=[("features", FloatTensorType([None, len(inputs)]))],
        options={id(estimator): {"zipmap": False}},
        target_opset=ONNX_OPSETS,
    )
    graph = wide.graph
    probabilities = next(o.name for o in graph.output if o.name == "probabilities")
    nodes = [
        helper.make_node("Concat", inputs, ["features"], axis=1, name="concat_features"),
        *graph.node,
        helper.make_node("Gather", [probabilities, "positive_class"], ["score"], axis=1),
    ]
    needed = {"score"}
    kept = []
    for node in reversed(nodes):  # drop what only the label output needed
        if needed & set(node.output):
            kept.append(node)
            needed |= set(node.input)
    new_graph = helper.make_graph(
        list(reversed(kept)),
        name,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 1]) for n in inputs],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None])],
        initializer=[
            *[i for i in graph.initializer if i.name in needed],
            helper.make_tensor("positive_class", TensorProto.INT64, [], [1]),
        ],
    )
    opsets: dict[str, int] = {}
    for o in wide.opset_import:  # skl2onnx lists the default domain twice for pipelines
        opsets[o.domain] = max(o.version, opsets.get(o.domain, 0))
    model = helper.make_model(
        new_graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        producer_name="rtml examples/fraud/build.py",
        ir_version=wide.ir_version,
    )
    helper.set_model_props(model, {"rtml.features": json.dumps(inputs)})
    onnx.checker.check_model(model, full_check=True)
    return model


def onnx_scores(model: onnx.ModelProto, x: np.ndarray, inputs: list[str]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {n: x[:, i : i + 1] for i, n in enumerate(inputs)}
    return np.asarray(session.run(["score"], feed)[0])


def split_keeping_holdout(
    x: np.ndarray, y: np.ndarray, seed: int, out: Path, inputs: list[str]
) -> list[np.ndarray]:
    """Train/test split; the test rows, which no model trains on, also go to holdout.parquet
    (the inputs by name and the label `fraud`) for `rtml optimize --data`."""
    parts: list[np.ndarray] = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    x_test, y_test = parts[1], parts[3]
    holdout = pd.DataFrame(x_test, columns=inputs).assign(fraud=y_test.astype(bool))
    holdout.to_parquet(out / "holdout.parquet", index=False)
    return parts


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "build", help="output folder")
    p.add_argument("--rows", type=int, default=50_000, help="past transactions (cards = rows/10)")
    p.add_argument("--seed", type=int, default=7, help="seed of every random draw")
    p.add_argument(
        "--as-of",
        type=datetime.fromisoformat,
        default=datetime.now(UTC).replace(minute=0, second=0, microsecond=0),
        help="timestamp of the newest feature rows (default: now, to the hour; UTC if naive)",
    )
    args = p.parse_args(argv)
    if args.rows < 1000:
        p.error(f"--rows must be at least 1000, not {args.rows}")
    if args.as_of.tzinfo is None:
        args.as_of = args.as_of.replace(tzinfo=UTC)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    sig = read_signature(MANIFEST)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    cards = make_cards(rng, args.rows // 10)
    merchant_risk = rng.beta(1.2, 8.0, N_MERCHANTS)
    history = make_history(rng, cards, merchant_risk, args.rows)
    print(
        f"[1/5] {len(history):,} synthetic transactions of {len(cards):,} cards (seed {args.seed})"
    )

    latest = card_features(history, cards, 0.0)
    missing = [n for n, _ in sig.view_features if n not in latest.columns]
    if missing:
        sys.exit(f"{MANIFEST} names view features build.py does not compute: {missing}")
    older_cards = rng.choice(len(cards), len(cards) // 10, replace=False)
    older = card_features(history, cards, OLD_SNAPSHOT_AGE).iloc[np.sort(older_cards)]
    frames = []
    for values, at in ((latest, args.as_of), (older, args.as_of - timedelta(seconds=2 * DAY))):
        frame = pd.DataFrame(
            {
                sig.entity_key: cards["card_id"].to_numpy()[values.index],
                sig.timestamp_field: pd.Timestamp(at).tz_convert("UTC"),
            }
        )
        for name, dtype in sig.view_features:
            frame[name] = values[name].to_numpy().astype(PARQUET_DTYPES.get(dtype, "float32"))
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table[sig.timestamp_field] = table[sig.timestamp_field].astype("datetime64[us, UTC]")
    table.to_parquet(out / "features.parquet", index=False)
    print(
        f"[2/5] features.parquet: {len(table):,} rows, {len(sig.view_features)} features, "
        f"as of {args.as_of.isoformat()} ({len(older):,} older rows)"
    )

    scored = make_scored(rng, cards, merchant_risk, args.rows // 2)
    x = np.column_stack(
        [latest[n].to_numpy()[scored["card"]] for n, _ in sig.view_features]
        + [scored[n].to_numpy() for n in sig.request_features]
    ).astype(np.float32)
    y = scored["fraud"].to_numpy().astype(np.int64)
    x_train, x_test, y_train, y_test = split_keeping_holdout(x, y, args.seed, out, sig.inputs)
    print(
        f"[3/5] {len(y):,} labelled transactions, {y.mean():.1%} fraud; "
        f"training on {len(y_train):,}, {len(y_test):,} held out (holdout.parquet)"
    )

    fit_started = time.perf_counter()
    trees = GradientBoostingClassifier(
        n_estimators=100, max_depth=3, learning_rate=0.1, subsample=0.5, random_state=args.seed
    ).fit(x_train, y_train)
    backup = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
        x_train, y_train
    )
    fit_s = time.perf_counter() - fit_started
    auc = roc_auc_score(y_test, trees.predict_proba(x_test)[:, 1])
    backup_auc = roc_auc_score(y_test, backup.predict_proba(x_test)[:, 1])
    print(
        f"[4/5] ROC AUC on {len(y_test):,} held-out transactions: model {auc:.3f} "
        f"(100 trees, depth 3), backup {backup_auc:.3f} (logistic regression); fit {fit_s:.1f}s"
    )

    for estimator, file in ((trees, "model.onnx"), (backup, "backup.onnx")):
        model = to_onnx(estimator, sig.inputs, f"fraud_{file.split('.')[0]}")
        drift = np.abs(
            onnx_scores(model, x_test, sig.inputs) - estimator.predict_proba(x_test)[:, 1]
        )
        if drift.max() > 1e-4:
            sys.exit(f"{file}: ONNX scores differ from scikit-learn's by up to {drift.max():.2e}")
        (out / file).write_bytes(model.SerializeToString())
    challenger = GradientBoostingClassifier(
        n_estimators=120, max_depth=3, learning_rate=0.1, subsample=0.5, random_state=args.seed + 1
    ).fit(x_train, y_train)
    base = to_onnx(challenger, sig.inputs, "fraud_candidate")
    challengers = {
        "candidate.onnx": base,
        "slow.onnx": candidates.slow(base, args.seed),
        "erroring.onnx": candidates.erroring(base),
        "shifted.onnx": candidates.shifted(base),
    }
    for file, model in challengers.items():
        (out / file).write_bytes(model.SerializeToString())
    challenger_auc = roc_auc_score(y_test, challenger.predict_proba(x_test)[:, 1])
    digest = hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    (out / "model.onnx.sha256").write_text(f"{digest}  model.onnx\n")
    print(
        f"[5/5] model.onnx ({(out / 'model.onnx').stat().st_size // 1024} KiB, sha256 "
        f"{digest[:12]}…), backup.onnx ({(out / 'backup.onnx').stat().st_size} B): "
        f"{len(sig.inputs)} float32 [N, 1] inputs -> score [N]; challengers "
        f"{', '.join(challengers)} (candidate AUC {challenger_auc:.3f})"
    )
    print(f"built {out} in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
