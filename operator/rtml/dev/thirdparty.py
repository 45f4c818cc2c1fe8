"""Where the upstream CRDs (KServe, KEDA, ...) are: data beside the checkout, never vendored.

The folder is an argument (`--thirdparty-crds`) or `$RTML_THIRDPARTY_CRDS`; the shipped
package knows no path of any machine (.ci/env.sh finds the folder for CI and the demo).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "RTML_THIRDPARTY_CRDS"
KSERVE_CRD = "kserve.serving.kserve.io_inferenceservices.yaml"


def thirdparty_crds_dir(explicit: Path | None = None) -> Path | None:
    """`explicit`, else `$RTML_THIRDPARTY_CRDS`; None when neither is given."""
    if explicit is not None:
        return explicit
    value = os.environ.get(ENV)
    return Path(value) if value else None
