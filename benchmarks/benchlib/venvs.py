"""Separate virtual environments for anchors whose pins clash with the project's own venv."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

CACHE = Path.home() / ".cache" / "rtml"
DONE_MARKER = ".rtml-bench-complete"


def venv_for(requirements: Path, prefix: str, log: Callable[[str], None]) -> Path:
    """The python of a venv built from REQUIREMENTS, keyed by its content; built when missing.

    A venv is only used once its marker file exists, so an interrupted build is redone.
    """
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    root = CACHE / f"{prefix}-{digest}"
    python = root / "bin" / "python"
    if (root / DONE_MARKER).exists():
        return python
    if root.exists():
        log(f"removing the incomplete venv {root}")
        shutil.rmtree(root)
    base = Path(getattr(sys, "_base_executable", sys.executable))
    log(f"creating {root} from {requirements.name} (once; a few minutes)")
    subprocess.run([str(base), "-m", "venv", str(root)], check=True)
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar=off"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, stdout=subprocess.DEVNULL)
    log(f"installing {requirements.name} into {root}")
    subprocess.run([*pip, "-r", str(requirements)], check=True, stdout=subprocess.DEVNULL)
    (root / DONE_MARKER).write_text(requirements.read_text())
    log(f"venv ready: {root}")
    return python
