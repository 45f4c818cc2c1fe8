"""Where the upstream CRDs (KServe, KEDA, ...) are: data beside the checkout, never vendored."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
ENV = "RTML_THIRDPARTY_CRDS"


def thirdparty_crds_dir() -> Path:
    """`$RTML_THIRDPARTY_CRDS`, else `../shared/thirdparty-crds` beside the checkout, else the
    workspace's `/work/shared/thirdparty-crds` (a clone elsewhere, as CI makes). The first
    candidate is returned when none exists, so a message can name where it looked."""
    explicit = os.environ.get(ENV)
    candidates = [Path(explicit)] if explicit else []
    candidates += [REPO.parent / "shared" / "thirdparty-crds", Path("/work/shared/thirdparty-crds")]
    return next((c for c in candidates if c.is_dir()), candidates[0])
