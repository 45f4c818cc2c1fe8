"""feature_repo/ works with the plain `feast` CLI (contract test on a scratch copy)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.runtime_proc import REPO

pytestmark = pytest.mark.feast


def test_feast_apply_and_materialize_on_a_scratch_copy(fraud_build: Path, tmp_path: Path) -> None:
    example = tmp_path / "example"
    example.mkdir()
    shutil.copy(REPO / "examples/fraud/model.yaml", example / "model.yaml")
    (example / "build").symlink_to(fraud_build)
    repo = tmp_path / "feature_repo"
    repo.mkdir()
    for name in ("feature_store.yaml", "fraud.py"):
        shutil.copy(REPO / "feature_repo" / name, repo / name)
    (repo / "data").mkdir()
    feast = str(Path(sys.executable).with_name("feast"))
    # fraud.py finds the rtml package relative to its own folder when not installed: point it
    # at the checkout through PYTHONPATH instead, as a user with `pip install -e .` would have.
    path = os.pathsep.join([str(REPO / "operator"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "RTML_FRAUD_EXAMPLE": str(example), "PYTHONPATH": path}
    applied = subprocess.run([feast, "apply"], cwd=repo, env=env, capture_output=True,
                             text=True, timeout=300, check=False)  # fmt: skip
    assert applied.returncode == 0, applied.stderr[-2000:]
    end = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    done = subprocess.run([feast, "materialize-incremental", end], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    with sqlite3.connect(repo / "data" / "online.db") as db:
        (entities,) = db.execute(
            "SELECT COUNT(DISTINCT entity_key) FROM rtml_card_features"
        ).fetchone()
    assert entities == 5000
