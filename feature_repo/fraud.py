"""The fraud example's entity, source and feature view, for the plain `feast` CLI.

Nothing is declared twice: `to_feast` translates the FeatureView in examples/fraud/model.yaml,
as the operator and `rtml serve` do. Its source, `file://build/features.parquet`, is relative to
the manifest's folder, so build the example first (`python examples/fraud/build.py`).
RTML_FRAUD_EXAMPLE may name another folder holding model.yaml and build/.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
try:
    import rtml  # noqa: F401 - installed with `pip install -e .`
except ModuleNotFoundError:  # a plain checkout: the package lives in operator/
    sys.path.insert(0, str(ROOT / "operator"))

from rtml.api.featureview import FeatureView  # noqa: E402
from rtml.features.translate import to_feast  # noqa: E402

EXAMPLE = Path(os.environ.get("RTML_FRAUD_EXAMPLE") or ROOT / "examples" / "fraud").resolve()
MANIFEST = EXAMPLE / "model.yaml"

_doc = next(
    (d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d.get("kind") == "FeatureView"),
    None,
)
if _doc is None:
    raise SystemExit(f"{MANIFEST} holds no FeatureView")
_objects = to_feast(FeatureView.model_validate(_doc), repo_dir=EXAMPLE)

# Feast registers what it finds at module level.
card = _objects.entity
card_features_source = _objects.source
card_features = _objects.feature_view
