"""The built images run as the cluster runs them: read-only root, 65532:65532, runc, no network
unless needed; the runtime and operator CLIs and their dependencies are in them, no compiler is,
and Redis answers. Needs `rtml dev images build` (.ci/env.sh) and podman."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from rtml.dev.images import images_dir
from rtml.dev.process import free_port
from tests.images import built_images, podman_inspect, podman_logs, podman_rm, podman_run

pytestmark = pytest.mark.images
__all__ = ["built_images"]  # the session fixture, used by name below
REPO = Path(__file__).resolve().parents[2]


def _containerfile_instruction(path: Path, instruction: str) -> list[str] | None:
    """The JSON (exec form) argument of the last `instruction` in a Containerfile, else None."""
    value = None
    for line in path.read_text().splitlines():
        if line.startswith(instruction + " "):
            value = json.loads(line[len(instruction) + 1 :])
    return value


@pytest.mark.parametrize("name", ["runtime", "operator"])
def test_config_is_what_the_cluster_expects(built_images: dict[str, str], name: str) -> None:
    containerfile = REPO / ("bentos" if name == "runtime" else "operator") / "Containerfile"
    cmd = None if name == "runtime" else ["operator"]  # the operator renders only `args`
    assert _containerfile_instruction(containerfile, "ENTRYPOINT") == ["rtml"]
    assert _containerfile_instruction(containerfile, "CMD") == cmd
    ref = built_images[name]
    assert json.loads(podman_inspect(ref, "{{json .Config.Entrypoint}}")) == ["rtml"]
    assert json.loads(podman_inspect(ref, "{{json .Config.Cmd}}")) == cmd
    assert podman_inspect(ref, "{{.Config.User}}") == "65532:65532"
    labels = json.loads(podman_inspect(ref, "{{json .Config.Labels}}"))
    assert labels["org.opencontainers.image.version"] == ref.rsplit(":", 1)[1]
    assert labels["org.opencontainers.image.title"] == f"rtml-{name}"


def test_runtime_cli_runs_read_only_as_nonroot(built_images: dict[str, str]) -> None:
    out = podman_run(built_images["runtime"], ["--help"], env={}, mounts=[], network="none")
    assert out.returncode == 0, out.stderr
    assert re.search(r"^\s+serve\b", out.stdout, re.MULTILINE), out.stdout
    out = podman_run(built_images["runtime"], ["serve", "--help"], env={}, mounts=[],
                     network="none")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "--no-register" in out.stdout


def test_runtime_imports_its_stack_and_writes_nothing_outside_its_volumes(
    built_images: dict[str, str],
) -> None:
    code = ("import rtml_runtime, rtml, onnxruntime, feast, bentoml; "
            "import os; print(os.getuid(), os.getgid(), os.environ['HOME'])")  # fmt: skip
    out = podman_run(built_images["runtime"], ["-c", code], env={}, mounts=[], network="none",
                     entrypoint=["python"])  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["65532", "65532", "/tmp"]
    probe = "for d in /tmp /var/lib/rtml /opt/rtml; do touch $d/x 2>/dev/null && echo $d; done"
    out = podman_run(built_images["runtime"], ["-c", probe], env={}, mounts=[], network="none",
                     entrypoint=["sh"])  # fmt: skip
    assert out.stdout.split() == ["/tmp", "/var/lib/rtml"], out.stderr


@pytest.mark.parametrize("name", ["runtime", "operator"])
def test_no_compiler_in_the_image(built_images: dict[str, str], name: str) -> None:
    out = podman_run(built_images[name], ["-c", "command -v gcc cc c++ clang || true"], env={},
                     mounts=[], network="none", entrypoint=["sh"])  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_operator_cli_runs_read_only_as_nonroot(built_images: dict[str, str]) -> None:
    out = podman_run(built_images["operator"], ["operator", "--help"], env={}, mounts=[],
                     network="none")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout
    out = podman_run(built_images["operator"], ["-c", "import rtml, kopf, kubernetes, feast"],
                     env={}, mounts=[], network="none", entrypoint=["python"])  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_redis_answers_ping(built_images: dict[str, str]) -> None:
    redis_cli = shutil.which("redis-cli")
    assert redis_cli, "redis-cli (Debian package redis-tools) is needed on the host"
    port = free_port()
    name = f"rtml-test-redis-{uuid.uuid4().hex[:8]}"
    args = ["--save", "", "--appendonly", "no", "--protected-mode", "no",
            "--bind", "127.0.0.1", "--port", str(port)]  # fmt: skip
    podman_run(built_images["redis"], args, env={}, mounts=[], detach=True, name=name)
    try:
        deadline = time.monotonic() + 30
        reply = ""
        while time.monotonic() < deadline and reply != "PONG":
            result = subprocess.run([redis_cli, "-p", str(port), "PING"], capture_output=True,
                                    text=True, timeout=10, check=False)  # fmt: skip
            reply = result.stdout.strip()
            time.sleep(0.2)
        assert reply == "PONG", podman_logs(name)
    finally:
        podman_rm(name)


@pytest.mark.parametrize("name", ["runtime", "operator", "redis"])
def test_oci_archive_names_the_image(built_images: dict[str, str], name: str) -> None:
    repo, tag = built_images[name].rsplit(":", 1)
    archive = images_dir() / f"{repo.rsplit('/', 1)[1]}-{tag}.tar"
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        index = json.load(member)
    names = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert names == [built_images[name]]


@pytest.mark.parametrize("name", ["runtime", "operator"])
def test_the_cluster_feast_stores_import_in_the_image(
    built_images: dict[str, str], name: str
) -> None:
    """Feast loads its Redis online store and SQL registry by name, at first use: a dependency
    the lock lacks for the image's own Python (redis needs async-timeout below 3.11.3, and
    Debian's Python is 3.11.2) surfaces only there, so import them here."""
    code = (
        "import feast.infra.online_stores.redis, feast.infra.registry.sql, psycopg; "
        "from feast.infra.online_stores.redis import RedisOnlineStoreConfig; print('ok')"
    )
    out = podman_run(built_images[name], ["-c", code], env={}, mounts=[], network="none",
                     entrypoint=["python3"])  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ok"]
