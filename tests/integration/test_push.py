"""Streaming features: rows pushed (HTTP and `rtml push`) are what the next read sees.

The runtime runs as a real process on Feast's Redis online store, with its L1 cache off
(`RTML_CACHE_ENTRIES=0`), so "the next read" is a read of Redis, and a push token
(`RTML_PUSH_TOKEN`): a push without it is a 401 that writes nothing. The 403 of a runtime with no
token is tested on the ASGI app (tests/unit/runtime/test_push_auth.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube import wait_for
from tests.runtime_proc import REPO, RedisServer, RuntimeProcess, run_rtml, write_manifest

pytestmark = [pytest.mark.runtime, pytest.mark.redis, pytest.mark.feast]
REQUEST = json.loads((REPO / "examples/fraud/request.json").read_text())
VIEW = "card-features"
TOKEN = "push-token-of-this-test"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def push_manifest(fraud_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fraud example with its FeatureView as a push source (backed by the built parquet)."""
    manifest = write_manifest(fraud_build, tmp_path_factory.mktemp("push"))
    docs = list(yaml.safe_load_all(manifest.read_text()))
    for d in docs:
        if d["kind"] == "FeatureView":
            d["spec"]["source"]["type"] = "push"
    manifest.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return manifest


@pytest.fixture(scope="module")
def runtime(push_manifest: Path, redis_server: RedisServer) -> Iterator[RuntimeProcess]:
    proc = RuntimeProcess(
        push_manifest,
        redis_server.url,
        server="uvicorn",
        env={"RTML_CACHE_ENTRIES": "0", "RTML_PUSH_TOKEN": TOKEN},
    )
    proc.start()
    yield proc
    proc.stop()


def row(manifest: Path, card: str, **values: Any) -> dict[str, Any]:
    doc = next(d for d in yaml.safe_load_all(manifest.read_text()) if d["kind"] == "FeatureView")
    out: dict[str, Any] = {"card_id": card, "event_timestamp": datetime.now(UTC).isoformat()}
    for f in doc["spec"]["features"]:
        out[f["name"]] = 5 if f["dtype"].startswith("INT") else 2.5
    return {**out, **values}


def push(runtime: RuntimeProcess, view: str, payload: Any) -> tuple[int, dict[str, Any]]:
    """POST /push/{view} with the runtime's token, as a stream processor sends it."""
    data = json.dumps(payload).encode()
    status, body, _ = runtime.request("POST", f"/push/{view}", data, headers=AUTH, timeout=60)
    return status, body


def predict(runtime: RuntimeProcess, card: str) -> dict[str, Any]:
    status, body, _ = runtime.post("/predict", {**REQUEST, "entity_id": card})
    assert status == 200, body
    return body


def test_a_push_is_visible_to_the_next_read(runtime: RuntimeProcess, push_manifest: Path) -> None:
    before = predict(runtime, "card_pushed")
    assert before["degraded"] is True  # never materialised: the view's defaults
    # The first push loads Feast's SDK in the runtime (seconds; 11 s seen on a loaded CI run).
    status, body = push(runtime, VIEW, {"rows": [row(push_manifest, "card_pushed")]})
    assert (status, body) == (200, {"view": VIEW, "rows": 1})
    after = predict(runtime, "card_pushed")
    assert after["degraded"] is False
    assert after["score"] != before["score"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"txn_count_1h": "many"}, "rows[0].txn_count_1h"),
        ({"no_such_feature": 1}, "rows[0].no_such_feature"),
        ({"event_timestamp": "yesterday"}, "rows[0].event_timestamp"),
        ({"card_id": None}, "rows[0].card_id"),
    ],
)
def test_a_bad_row_is_refused_naming_the_field(
    runtime: RuntimeProcess, push_manifest: Path, change: dict[str, Any], field: str
) -> None:
    status, body = push(runtime, VIEW, {"rows": [row(push_manifest, "c", **change)]})
    assert status == 400, body
    assert body["error"]["field"] == field
    assert field in body["error"]["message"]


def test_pushing_to_another_view_is_not_found(runtime: RuntimeProcess) -> None:
    status, body = push(runtime, "other-view", {"rows": []})
    assert status == 404, body
    assert body["error"]["field"] == "view"


@pytest.mark.parametrize(
    "headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}]
)
def test_a_push_without_the_token_is_401_and_writes_nothing(
    runtime: RuntimeProcess, push_manifest: Path, headers: dict[str, str]
) -> None:
    data = json.dumps({"rows": [row(push_manifest, "card_unauthorized")]}).encode()
    status, body, answer = runtime.request("POST", f"/push/{VIEW}", data, headers=headers)
    assert status == 401, body
    assert body["error"]["code"] == "unauthorized"
    assert {k.lower(): v for k, v in answer.items()}["www-authenticate"].startswith("Bearer")
    assert predict(runtime, "card_unauthorized")["degraded"] is True  # nothing was written


def test_rtml_push_writes_rows_the_runtime_serves(
    runtime: RuntimeProcess, push_manifest: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    assert predict(runtime, "card_from_cli")["degraded"] is True
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps({"rows": [row(push_manifest, "card_from_cli")]}))
    store = push_manifest.parent / ".rtml" / "feature_store"
    ran = run_rtml("push", VIEW, "--file", str(rows), "--profile", "redis",
                   "--redis-url", redis_server.url, "--store-path", str(store))  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "pushed 1 row(s)" in ran.stdout
    # A few tries: one CI run had the first answer after the push degraded (a slow read on a
    # loaded machine answers with the defaults too); a row never written stays degraded.
    wait_for(
        lambda: predict(runtime, "card_from_cli")["degraded"] is False,
        10,
        0.5,
        "an answer from the row `rtml push` wrote",
    )
