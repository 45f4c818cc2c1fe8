"""The contract, run: what the operator renders is started exactly as written.

The fraud example's Model and FeatureView are rendered with a cluster's Feast profile (Redis
with a password, a SQL registry, both credentials in a Secret). Then, with the rendered argv and
env (secretKeyRefs resolved from that Secret, as the kubelet does) and the rendered mounts:
- the materialization CronJob's command fills a real, password-protected Redis;
- the predictor container runs on the host, through the image's entrypoint command (`rtml`), in
  a mount namespace where the ConfigMap's model.json sits at the rendered mountPath;
- the same container runs inside the built runtime image (podman, read-only root, the rendered
  UID and GID);
and each answers a prediction from the Redis rows. A bad setting stops `rtml serve` with the
variable named.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from rtml.api.featureview import FeatureView
from rtml.api.model import Model
from rtml.contract import (
    ARTIFACT_DIR,
    CONFIG_KEY,
    HTTP_PORT,
    RUNTIME_ENTRYPOINT,
    FeastProfile,
    FeastSecretRef,
)
from rtml.features.store import apply_views, make_store
from rtml.operator.render import RenderContext, render_model_children
from rtml.operator.render.cronjob import render_materialization_cronjob
from rtml.operator.render.meta import config_map_name
from rtml.operator.render.stream import stream_deployment_name
from tests.images import podman_logs, podman_rm, podman_run
from tests.kube import resolve_env as kube_resolve_env
from tests.runtime_proc import LOGS, REPO, RedisServer, rtml_env, write_manifest

pytestmark = [pytest.mark.redis, pytest.mark.feast, pytest.mark.runtime]
NAMESPACE = "contract"
PASSWORD = "contract-redis-s3cret-7f3a"
SECRET = FeastSecretRef(name="feast-credentials")
REQUEST = json.loads((REPO / "examples/fraud/request.json").read_text())
STREAM_OUTPUT = "contract:results"  # spec.stream.output; input and group keep their defaults


@dataclass(frozen=True)
class Rendered:
    config_json: str  # the ConfigMap's model.json
    runtime: dict[str, Any]  # the Deployment's container
    stream: dict[str, Any]  # spec.stream's Deployment's container
    cronjob: dict[str, Any]  # the CronJob's container
    secret: dict[str, str]  # the Secret the chart names (feast.existingSecret)


def resolve_env(container: dict[str, Any], secret: dict[str, str]) -> dict[str, str]:
    """The container's env as the kubelet gives it, the chart's Secret holding `secret`."""

    def lookup(name: str, key: str) -> str:
        assert name == SECRET.name, f"a reference to Secret {name!r}, not {SECRET.name!r}"
        assert key in secret, f"Secret {SECRET.name} has no key {key!r}"
        return secret[key]

    return kube_resolve_env(container, lookup)


def render(build: Path, redis: RedisServer, registry: str, feast_path: Path) -> Rendered:
    manifest = write_manifest(build, build / "contract")
    docs = {d["kind"]: d for d in yaml.safe_load_all(manifest.read_text())}
    view_doc = {**docs["FeatureView"]}
    view_doc["metadata"] = {**view_doc["metadata"], "namespace": NAMESPACE, "uid": "v-1"}
    model_doc = {**docs["Model"]}
    model_doc["metadata"] = {**model_doc["metadata"], "namespace": NAMESPACE, "uid": "m-1"}
    model_doc["spec"] = {**model_doc["spec"], "stream": {"output": STREAM_OUTPUT}}
    profile = FeastProfile(
        kind="redis",
        path=feast_path,
        redis_url=redis.url,
        redis_password=PASSWORD,
        registry=registry,
    )
    ctx = RenderContext(feast=profile, feast_secret=SECRET)
    model = Model.model_validate(model_doc)
    children = render_model_children(model, ctx, view_doc)
    by_name = {(c["kind"], c["metadata"]["name"]): c for c in children}
    config_map = by_name["ConfigMap", config_map_name(model)]
    (runtime,) = by_name["Deployment", "fraud"]["spec"]["template"]["spec"]["containers"]
    stream = by_name["Deployment", stream_deployment_name(model)]
    (consumer,) = stream["spec"]["template"]["spec"]["containers"]
    view = FeatureView.model_validate(view_doc)
    cronjob = render_materialization_cronjob(view, ctx)
    (job,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    # What the operator's reconcile does before the CronJob's first run: register the view.
    apply_views(make_store(profile), [view])
    return Rendered(
        config_json=config_map["data"][CONFIG_KEY],
        runtime=runtime,
        stream=consumer,
        cronjob=job,
        secret={SECRET.redis_password_key: PASSWORD, SECRET.registry_key: registry},
    )


@pytest.fixture(scope="module")
def protected_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("contract-redis"), password=PASSWORD)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rendered(
    fraud_build: Path, protected_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Rendered:
    feast = tmp_path_factory.mktemp("contract-feast")
    registry = f"sqlite:///{feast / 'registry.db'}"
    return render(fraud_build, protected_redis, registry, feast / "store")


@pytest.fixture(scope="module")
def materialized(rendered: Rendered, protected_redis: RedisServer) -> Rendered:
    """The CronJob's exact command and env, run once: the view's rows land in Redis."""
    command = rendered.cronjob["command"]
    assert command[: len(RUNTIME_ENTRYPOINT)] == list(RUNTIME_ENTRYPOINT)
    env = resolve_env(rendered.cronjob, rendered.secret)
    for mount in rendered.cronjob["volumeMounts"]:  # the emptyDirs the job writes to
        Path(mount["mountPath"]).mkdir(parents=True, exist_ok=True)
    binary = shutil.which(command[0])
    assert binary, f"{command[0]} is not on PATH"
    ran = subprocess.run(
        [binary, *command[1:]],
        env={**_host_env(), **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert _keys(protected_redis) > 0, "materialization wrote nothing to Redis"
    return rendered


def _host_env() -> dict[str, str]:
    """This machine's environment minus any rtml setting, so only the rendered env counts."""
    return {k: v for k, v in rtml_env().items() if not k.startswith("RTML_")}


def _keys(redis: RedisServer) -> int:
    with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as s:
        s.sendall(b"AUTH %s\r\nDBSIZE\r\n" % PASSWORD.encode())
        time.sleep(0.2)
        reply = s.recv(256).split(b"\r\n")
    assert reply[0] == b"+OK", reply
    return int(reply[1].lstrip(b":"))


def _wait_ready(alive: Any, describe: Any, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{HTTP_PORT}/v2/health/ready"
    while time.monotonic() < deadline:
        if not alive():
            pytest.fail(f"the runtime exited before it was ready:\n{describe()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"the runtime was not ready within {timeout} s:\n{describe()}")


def _predict() -> dict[str, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{HTTP_PORT}/predict",
        data=json.dumps(REQUEST).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback
        assert r.status == 200
        return dict(json.loads(r.read()))


def _port_is_free() -> None:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", HTTP_PORT)) == 0:
            pytest.fail(f"port {HTTP_PORT} (the contract's) is taken; the test needs it")


def _mounts(
    rendered: Rendered, config_dir: Path, artifacts: Path, container: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Host folders standing in for the rendered volumes of `container` (default: the
    predictor's) (the ConfigMap and the artifacts emptyDir; /tmp stays the host's), keyed by
    the rendered mountPath."""
    config_dir.mkdir(exist_ok=True)
    artifacts.mkdir(exist_ok=True)
    (config_dir / CONFIG_KEY).write_text(rendered.config_json)
    mounts = (container or rendered.runtime)["volumeMounts"]
    by_name = {m["name"]: m["mountPath"] for m in mounts}
    assert by_name["artifacts"] == ARTIFACT_DIR
    return {by_name["config"]: config_dir, by_name["artifacts"]: artifacts}


@contextlib.contextmanager
def _on_host(
    rendered: Rendered, container: dict[str, Any], tmp_path: Path, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`container` run on this host as the kubelet would: the image's entrypoint command
    with the rendered args and env, in a mount namespace where the rendered volumes sit at
    their mountPaths. Stopped (its process group) on the way out."""
    if os.geteuid() != 0:
        pytest.fail("the host contract test bind-mounts the ConfigMap in a mount namespace: root")
    assert "command" not in container  # the image's ENTRYPOINT runs the rendered args
    binds = _mounts(rendered, tmp_path / "config", tmp_path / "artifacts", container)
    created = [Path(p) for p in binds if not Path(p).exists()]
    for path in created:
        path.mkdir(parents=True)
    entrypoint = shutil.which(RUNTIME_ENTRYPOINT[0])
    assert entrypoint, f"{RUNTIME_ENTRYPOINT[0]} is not on PATH"
    script = "set -e; " + "".join(
        f'mount --bind "${i * 2 + 1}" "${i * 2 + 2}"; ' for i in range(len(binds))
    )
    script += f'shift {len(binds) * 2}; exec "$@"'
    pairs = [str(x) for at, host_path in binds.items() for x in (host_path, at)]
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
            *pairs, entrypoint, *container["args"]]  # fmt: skip
    LOGS.mkdir(exist_ok=True)
    env = {**_host_env(), **resolve_env(container, rendered.secret)}
    proc = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for path in created:
            path.rmdir()


def test_the_rendered_runtime_serves_on_the_host(materialized: Rendered, tmp_path: Path) -> None:
    _port_is_free()
    log = LOGS / "contract-host.log"
    with _on_host(materialized, materialized.runtime, tmp_path, log) as proc:
        _wait_ready(lambda: proc.poll() is None, lambda: log.read_text()[-3000:])
        body = _predict()
        assert body["model"] == "fraud"
        assert body["degraded"] is False  # the card's features came from the protected Redis


def test_the_rendered_stream_consumer_scores_on_the_host(
    materialized: Rendered, protected_redis: RedisServer, tmp_path: Path
) -> None:
    """spec.stream's container, as rendered: it joins its group on the default input stream,
    reads the card's features from the protected Redis and publishes to spec.stream.output."""
    container = materialized.stream
    args = container["args"]
    assert args[0] == "stream"
    port = int(args[args.index("--metrics-port") + 1])
    assert container["livenessProbe"]["httpGet"]["port"] == port
    client = redis.Redis(port=protected_redis.port, password=PASSWORD)
    event = {"event_id": "contract-1", "card_id": REQUEST["entity_id"],
             "event_time": f"{time.time():.3f}", **REQUEST["features"]}  # fmt: skip
    client.xadd("rtml:fraud:events", event)  # type: ignore[arg-type]
    log = LOGS / "contract-stream.log"
    with _on_host(materialized, container, tmp_path, log) as proc:
        deadline = time.monotonic() + 180
        published: list[Any] = []
        while not published and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            published = client.xrange(STREAM_OUTPUT, "-", "+")
            time.sleep(0.5)
        assert published, f"no result in {STREAM_OUTPUT} within 180 s:\n{log.read_text()[-3000:]}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert b"rtml_stream" in r.read()  # the probe's endpoint answers
    (_, fields), *_ = published
    result = {k.decode(): v.decode() for k, v in fields.items()}
    assert result["event_id"] == "contract-1", result
    assert "error" not in result, result
    assert 0.0 <= float(result["score"]) <= 1.0, result
    assert result["degraded"] == "false", result  # the card's row came from the protected Redis
    assert client.xpending("rtml:fraud:events", "rtml-fraud")["pending"] == 0  # acknowledged


@pytest.mark.images
def test_the_rendered_runtime_serves_inside_the_built_image(
    materialized: Rendered, built_images: dict[str, str], fraud_build: Path, tmp_path: Path
) -> None:
    _port_is_free()
    container = materialized.runtime
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    user = f"{security['runAsUser']}:{security['runAsGroup']}"
    # A volume a pod reads its artifact from is readable by the pod's user; pytest's folders
    # are root-only (0700).
    fraud_build.chmod(0o755)
    config = tmp_path / "config"
    binds = _mounts(materialized, config, tmp_path / "unused")
    config.chmod(0o755)  # the ConfigMap volume: readable by the pod's user
    config_at = next(at for at, host in binds.items() if host == config)
    name = f"rtml-contract-{os.getpid()}"
    podman_run(
        built_images["runtime"],
        container["args"],
        env=resolve_env(container, materialized.secret),
        # The ConfigMap, and the artifact where the resolved config's file:// URI points
        # (a volume in a real pod); /tmp and /var/lib/rtml are the writable emptyDirs.
        mounts=[(config, config_at, True), (fraud_build, str(fraud_build), True)],
        user=user,
        read_only=True,
        network="host",
        detach=True,
        name=name,
    )
    try:
        _wait_ready(lambda: True, lambda: podman_logs(name)[-3000:])
        body = _predict()
        assert body["model"] == "fraud"
        assert body["degraded"] is False
    finally:
        podman_rm(name)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("RTML_FEAST_STORE", "redsi"), ("RTML_MAX_BATCH_ROWS", "many"), ("RTML_FEAST_REDIS_URL", "x")],
)
def test_a_bad_setting_stops_serve_naming_the_variable(
    materialized: Rendered, tmp_path: Path, variable: str, value: str
) -> None:
    """A bad value used to become a default silently; now `rtml serve` refuses to start."""
    (tmp_path / CONFIG_KEY).write_text(materialized.config_json)
    env = {**_host_env(), **resolve_env(materialized.runtime, materialized.secret)}
    env[variable] = value
    ran = subprocess.run(
        [shutil.which("rtml") or "rtml", "serve", str(tmp_path / CONFIG_KEY), "--no-register"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 1
    assert f"Error: {variable}: " in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr
