"""One machine, no Redis: `rtml serve` with Feast's SQLite online store (the demo's path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.runtime_proc import REPO, RuntimeProcess, write_manifest

pytestmark = [pytest.mark.runtime, pytest.mark.feast]
REQUEST = json.loads((REPO / "examples/fraud/request.json").read_text())


def test_serve_reads_materialised_features_from_sqlite(fraud_build: Path, tmp_path: Path) -> None:
    manifest = write_manifest(fraud_build, tmp_path / "sqlite")
    proc = RuntimeProcess(manifest, redis_url=None, env={"RTML_CACHE_ENTRIES": "0"})
    try:
        proc.start()
        status, body, _ = proc.post("/predict", REQUEST)
        assert status == 200, body
        assert body["degraded"] is False  # the card's row came from online.db
        known = body["score"]
        status, body, _ = proc.post("/predict", {**REQUEST, "entity_id": "no-such-card"})
        assert status == 200, body
        assert body["degraded"] is True
        assert body["score"] != known
    finally:
        proc.stop()
    assert (tmp_path / "sqlite" / ".rtml" / "feature_store" / "online.db").exists()
