"""Build the streaming example's model from synthetic data; nothing is downloaded.

    python examples/stream/build.py [--out DIR] [--rows N] [--seed S]

Writes into DIR (default: build/ beside this file) model.onnx and model.onnx.sha256: a
scikit-learn LogisticRegression over the five window aggregates of model.yaml's FeatureView and
the transaction's amount, exported by skl2onnx as it comes (one float [N, 6] input, outputs
`label` and `probabilities`), which the Model serves through spec.features.columns and
spec.output. The label is synthetic: bursts of transactions, and amounts far above the card's
usual, are the risky ones.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

HERE = Path(__file__).resolve().parent
COLUMNS = [
    "txn_count_1m",
    "txn_count_1h",
    "amount_sum_1h",
    "amount_max_1h",
    "amount_avg_24h",
    "amount",
]
ONNX_OPSETS = {"": 17, "ai.onnx.ml": 3}


def synthetic(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Window aggregates as a card's recent history would give them, and a fraud label."""
    rng = np.random.default_rng(seed)
    usual = rng.lognormal(3.5, 0.6, rows)  # the card's usual amount
    count_1h = rng.poisson(2.0, rows) + 1
    count_1m = np.minimum(count_1h, rng.poisson(0.3, rows) + 1)
    amount = usual * rng.lognormal(0.0, 0.5, rows)
    sum_1h = amount + usual * (count_1h - 1) * rng.uniform(0.5, 1.5, rows)
    max_1h = np.maximum(amount, usual * rng.uniform(0.8, 2.0, rows))
    avg_24h = usual * rng.uniform(0.8, 1.2, rows)
    x = np.column_stack([count_1m, count_1h, sum_1h, max_1h, avg_24h, amount])
    risk = -4.0 + 0.9 * (count_1m - 1) + 0.25 * count_1h + 1.5 * np.log(amount / avg_24h)
    y = (rng.uniform(size=rows) < 1 / (1 + np.exp(-risk))).astype(np.int64)
    return x.astype(np.float32), y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "build")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    x, y = synthetic(args.rows, args.seed)
    split = int(len(y) * 0.8)
    model = LogisticRegression(max_iter=1000).fit(x[:split], y[:split])
    auc = roc_auc_score(y[split:], model.predict_proba(x[split:])[:, 1])
    onnx_model = convert_sklearn(
        model,
        name="card_stream",
        initial_types=[("features", FloatTensorType([None, len(COLUMNS)]))],
        options={id(model): {"zipmap": False}},
        target_opset=ONNX_OPSETS,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    data = onnx_model.SerializeToString()
    (args.out / "model.onnx").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    (args.out / "model.onnx.sha256").write_text(digest + "\n")
    print(f"wrote {args.out / 'model.onnx'} (sha256 {digest}); held-out AUC {auc:.3f}")


if __name__ == "__main__":
    main()
