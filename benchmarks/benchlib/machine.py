"""Facts about the machine and the software under test, recorded with every result."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

NOT_USED = "not used in this run"
KSERVE = "kserve (own venv)"
PACKAGES = [
    "onnxruntime",
    "numpy",
    "bentoml",
    "feast",
    "redis",
    "uvicorn",
    "starlette",
    "uvloop",
    "httptools",
    "prometheus-client",
]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "not found"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_facts(kserve_python: Path) -> dict[str, Any]:
    probe = "import importlib.metadata as m; print(m.version('kserve'))"
    out = subprocess.run(
        [str(kserve_python), "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    kserve = out.stdout.strip() if out.returncode == 0 else NOT_USED
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": sys.version.split()[0],
        "packages": {p: _version(p) for p in PACKAGES} | {KSERVE: kserve},
        "wrk": _first_line(["wrk", "-v"]),
        "redis_server": _first_line(["redis-server", "--version"]),
    }


def control_plane_facts(bin_dir: Path) -> dict[str, Any]:
    """The scale suite's machine: no servers or wrk, the control plane's and Kopf's versions."""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": sys.version.split()[0],
        "packages": {p: _version(p) for p in ("kopf", "kubernetes", "pydantic")},
        "kube_apiserver": _first_line([str(bin_dir / "kube-apiserver"), "--version"]),
        "etcd": _first_line([str(bin_dir / "etcd"), "--version"]),
    }
