"""What every server answers: the fraud example built into a temp dir, its features in Redis,
the request bodies, the entity ids wrk draws from, and the manifests rtml serves."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tests.redis_server import answers_ping, redis_server_argv

from benchlib.procs import LOAD_CPU, Server, free_port
from rtml.contract import FEAST_PROJECT

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "fraud"
ENTITY_PLACEHOLDER = "__ENTITY__"
DEFAULT_REQUEST = {"amount": 42.5, "merchant_risk": 0.2, "hour_of_day": 14}


@dataclass
class Fixture:
    root: Path
    model_path: Path
    manifest: Path  # the example's FeatureView + Model (rtml with features)
    plain_manifest: Path  # the same Model taking all 30 inputs in the request, no view
    view_name: str  # the Feast name of the view
    feature_names: list[str]  # the view's features, in order
    join_key: str
    entity_ids: list[str]
    ids_file: Path
    plain_body: str  # {"features": {30 inputs}}
    entity_body: str  # {"entity_id": ENTITY_PLACEHOLDER, "features": {3 request features}}
    store_path: Path
    feast_repo: Path | None = None
    redis_url: str = ""
    redis_pid: int | None = None

    @property
    def candidate_path(self) -> Path:
        """The example's challenger (build.py writes it beside model.onnx, same signature)."""
        return self.model_path.parent / "candidate.onnx"

    def body_for(self, entity_id: str) -> str:
        return self.entity_body.replace(ENTITY_PLACEHOLDER, entity_id)

    @property
    def entity_body_parts(self) -> tuple[str, str]:
        prefix, suffix = self.entity_body.split(ENTITY_PLACEHOLDER)
        return prefix, suffix


def build_fixture(root: Path, log: Callable[[str], None]) -> Fixture:
    """Build the example into ROOT with its own build script, then derive bodies and manifests."""
    build = root / "build"
    log(f"building the fraud example into {build} (examples/fraud/build.py)")
    subprocess.run(
        [sys.executable, str(EXAMPLE / "build.py"), "--out", str(build)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    docs = [d for d in yaml.safe_load_all((EXAMPLE / "model.yaml").read_text()) if d]
    view = next(d for d in docs if d["kind"] == "FeatureView")
    model = next(d for d in docs if d["kind"] == "Model")
    # Guard rails that would cap or divert load are not what is measured: no rate limit, and
    # deadlines far above any latency seen, so a queue at saturation is measured as latency
    # (as it is for the anchors, which have no deadlines) rather than answered by a fallback.
    model["spec"].pop("rateLimit", None)
    model["spec"]["slo"] = dict.fromkeys(["p99LatencyMs", "timeoutMs", "featureBudgetMs"], 10_000)
    manifest = root / "rtml-features.yaml"
    manifest.write_text(yaml.safe_dump_all([view, model], sort_keys=False))

    feature_names = [f["name"] for f in view["spec"]["features"]]
    request_names = list(model["spec"]["features"]["requestFeatures"])
    plain = json.loads(json.dumps(model))
    plain["spec"]["features"] = {"requestFeatures": feature_names + request_names}
    plain["spec"]["fallback"] = {"mode": "reject"}
    plain_manifest = root / "rtml-plain.yaml"
    plain_manifest.write_text(yaml.safe_dump(plain, sort_keys=False))

    import pandas as pd

    join_key = view["spec"]["entity"]["joinKey"]
    frame = pd.read_parquet(build / "features.parquet")
    ts = view["spec"]["source"].get("timestampField", "event_timestamp")
    latest = frame.sort_values(ts).groupby(join_key).tail(1)
    entity_ids = [str(x) for x in latest[join_key]]
    ids_file = root / "entity_ids.txt"
    ids_file.write_text("\n".join(entity_ids) + "\n")

    request = _request_features(request_names)
    first = latest.iloc[0]
    stored = {n: float(first[n]) for n in feature_names}
    plain_body = json.dumps({"features": {**stored, **request}}, separators=(",", ":"))
    entity_body = json.dumps(
        {"entity_id": ENTITY_PLACEHOLDER, "features": request}, separators=(",", ":")
    )
    return Fixture(
        root=root,
        model_path=build / "model.onnx",
        manifest=manifest,
        plain_manifest=plain_manifest,
        view_name=view["metadata"]["name"].replace("-", "_"),
        feature_names=feature_names,
        join_key=join_key,
        entity_ids=entity_ids,
        ids_file=ids_file,
        plain_body=plain_body,
        entity_body=entity_body,
        store_path=root / "feature_store",
    )


def _request_features(names: list[str]) -> dict[str, Any]:
    """The example's request.json features when it has them, else fixed values."""
    path = EXAMPLE / "request.json"
    given: dict[str, Any] = {}
    if path.exists():
        given = json.loads(path.read_text()).get("features", {})
    return {n: given.get(n, DEFAULT_REQUEST.get(n, 1.0)) for n in names}


def start_redis(root: Path, log: Callable[[str], None]) -> tuple[Server, str]:
    """A private redis-server on a free port, pinned to the load CPU (not the server's)."""
    port = free_port()
    server = Server(
        name="redis",
        argv=redis_server_argv("redis-server", port, root),
        env={},
        cwd=root,
        log_path=root / "redis.log",
        cpu=LOAD_CPU,
    )
    server.start()
    if not answers_ping(port, 10, alive=server.alive):
        raise RuntimeError(f"redis-server did not start:\n{server.log_tail()}")
    log(f"redis-server on 127.0.0.1:{port} (CPU {LOAD_CPU})")
    return server, f"redis://127.0.0.1:{port}/0"


def register_features(fixture: Fixture, redis_url: str, log: Callable[[str], None]) -> None:
    """Register the view and materialise it into Redis with rtml's own Feast code, then write a
    feature_store.yaml for the anchors, which read the same registry with the plain Feast SDK."""
    from rtml.contract import FeastProfile
    from rtml.features.store import apply_views, make_store, materialize
    from rtml_runtime.config import load_manifest

    config = load_manifest(fixture.manifest)
    assert config.feature_view is not None
    started = time.monotonic()
    profile = FeastProfile(kind="redis", path=fixture.store_path, redis_url=redis_url)
    # Feast prints materialisation progress to stdout: keep it out of the progress lines.
    with (fixture.root / "materialize.log").open("w") as quiet, contextlib.redirect_stdout(quiet):
        store = make_store(profile, project=FEAST_PROJECT)
        apply_views(store, [config.feature_view], base_dir=config.base_dir)
        materialize(store, [config.feature_view])
    fixture.redis_url = redis_url
    fixture.feast_repo = fixture.root / "feast_repo"
    fixture.feast_repo.mkdir(exist_ok=True)
    (fixture.feast_repo / "feature_store.yaml").write_text(
        yaml.safe_dump(feature_store_yaml(profile), sort_keys=False)
    )
    log(
        f"registered and materialised FeatureView {fixture.view_name} into Redis "
        f"({len(fixture.entity_ids)} entities, {time.monotonic() - started:.1f}s)"
    )


def feature_store_yaml(profile: Any) -> dict[str, Any]:
    """The feature_store.yaml equivalent of rtml's RepoConfig for PROFILE (same registry, same
    Redis, same key serialisation), so the anchors use the plain SDK on the same data."""
    from rtml.contract import FEAST_ENTITY_KEY_VERSION
    from rtml.features.store import redis_connection_string

    return {
        "project": FEAST_PROJECT,
        "provider": "local",
        "registry": {
            "registry_type": "sql",
            "path": profile.registry_url,
            "cache_ttl_seconds": profile.registry_cache_ttl_seconds,
        },
        "online_store": {
            "type": "redis",
            "connection_string": redis_connection_string(profile),
        },
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": FEAST_ENTITY_KEY_VERSION,
    }


def post(url: str, body: str, timeout: float = 2.0) -> tuple[int, Any]:
    req = urllib.request.Request(  # noqa: S310 - plain HTTP to a server on loopback
        url, data=body.encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback only
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
