"""The upstream CRDs (KServe, KEDA, the Prometheus Operator's) the tests and the demo install, so
a real API server validates what the operator writes (and tests check the chart's monitoring
objects against them): data, never vendored into the repository.

They come, unchanged, from the upstream projects' Go modules at pinned versions, through the Go
module proxy (whose checksum database verifies every module zip), into a cache outside the
checkout keyed by the pins, like the Go-built tools. `$RTML_THIRDPARTY_CRDS` (or an explicit
folder) overrides that with a folder of the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rtml.dev.errors import ToolsError
from rtml.dev.tools import Progress, build_lock, cache_root, go_version

ENV = "RTML_THIRDPARTY_CRDS"
KSERVE_CRD = "kserve.serving.kserve.io_inferenceservices.yaml"
KEDA_CRD = "keda.scaledobjects.yaml"
PODMONITOR_CRD = "prometheus-operator.podmonitors.yaml"
PROMETHEUSRULE_CRD = "prometheus-operator.prometheusrules.yaml"


@dataclass(frozen=True)
class UpstreamCrd:
    file: str  # the name tests and the demo look for
    module: str
    version: str
    path: str  # inside the module


# KServe v0.20.0 and KEDA v2.21.0: the newest versions the proxy serves. Against the copies the
# project was first tested with, they differ only in annotations (controller-gen's version and
# cert-manager's CA injection, which a control plane without cert-manager ignores).
# The Prometheus Operator v0.94.1 (the newest its main module's proxy serves; v0.95 is refused):
# the PodMonitor and PrometheusRule the chart renders when monitoring is on.
_PROMETHEUS_OPERATOR = ("github.com/prometheus-operator/prometheus-operator", "v0.94.1")
_PROMETHEUS_OPERATOR_CRDS = "example/prometheus-operator-crd/monitoring.coreos.com_"
CRDS = (
    UpstreamCrd(KSERVE_CRD, "github.com/kserve/kserve", "v0.20.0",
                "config/crd/full/serving.kserve.io_inferenceservices.yaml"),
    UpstreamCrd(KEDA_CRD, "github.com/kedacore/keda/v2", "v2.21.0",
                "config/crd/bases/keda.sh_scaledobjects.yaml"),
    UpstreamCrd(PODMONITOR_CRD, *_PROMETHEUS_OPERATOR,
                f"{_PROMETHEUS_OPERATOR_CRDS}podmonitors.yaml"),
    UpstreamCrd(PROMETHEUSRULE_CRD, *_PROMETHEUS_OPERATOR,
                f"{_PROMETHEUS_OPERATOR_CRDS}prometheusrules.yaml"),
)  # fmt: skip


def cache_dir() -> Path:
    pins = "\n".join(f"{c.file} {c.module}@{c.version} {c.path}" for c in CRDS)
    return cache_root() / "thirdparty-crds" / hashlib.sha256(pins.encode()).hexdigest()[:16]


def ensure_thirdparty_crds(progress: Progress = print) -> Path:
    """The folder holding every pinned upstream CRD, downloading the missing ones."""
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    with build_lock(target / ".lock"):
        for crd in CRDS:
            if (target / crd.file).is_file():
                continue
            go_version()  # a sentence, not a traceback, when Go is missing
            progress(f"crds: fetching {crd.file} from {crd.module}@{crd.version}...")
            result = subprocess.run(
                ["go", "mod", "download", "-json", f"{crd.module}@{crd.version}"],
                capture_output=True, text=True, check=False, timeout=900,
                env={**os.environ, "GOFLAGS": "-mod=mod"},
            )  # fmt: skip
            info = json.loads(result.stdout or "{}")
            if result.returncode != 0 or "Dir" not in info:
                detail = info.get("Error") or result.stderr.strip() or "no output"
                raise ToolsError(
                    f"Could not download {crd.module}@{crd.version} from the Go module proxy "
                    f"for {crd.file}: {detail}"
                )
            source = Path(info["Dir"]) / crd.path
            if not source.is_file():
                raise ToolsError(f"{crd.module}@{crd.version} has no {crd.path}.")
            partial = target / f".{crd.file}.partial"
            shutil.copyfile(source, partial)
            partial.replace(target / crd.file)
    return target


def thirdparty_crds_dir(explicit: Path | None = None, progress: Progress = print) -> Path:
    """`explicit`, else `$RTML_THIRDPARTY_CRDS`, else the pinned CRDs (fetched if need be)."""
    if explicit is not None:
        return explicit
    value = os.environ.get(ENV)
    return Path(value) if value else ensure_thirdparty_crds(progress)
