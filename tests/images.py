"""Running rtml's container images with podman as a pod would (read-only, 65532:65532, runc),
with podman's state under the images cache ($RTML_CACHE_DIR/images), never /var/lib/containers.

    podman_run(image, args, env={...}, mounts=[(host, container, read_only)], ...)
    podman_rm(name)
    built_images  (session fixture: {"runtime": ref, "operator": ref, "redis": ref})
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, overload

import pytest

from rtml.dev.images import (
    DEFAULT_ULIMITS,
    built_refs,
    container_env,
    host_leftovers_removed,
    read_project,
)

REPO = Path(__file__).resolve().parents[1]
NONROOT = "65532:65532"


def podman_command() -> str:
    podman = shutil.which("podman")
    if podman is None:
        pytest.fail("podman is not installed (Debian package `podman`); .ci/env.sh installs it.")
    return podman


def podman_argv(
    image: str,
    args: list[str],
    *,
    env: dict[str, str],
    mounts: list[tuple[str | Path, str, bool]],
    user: str = NONROOT,
    read_only: bool = True,
    network: str = "host",
    detach: bool = False,
    name: str | None = None,
    entrypoint: list[str] | None = None,
) -> list[str]:
    """The `podman run` command line of :func:`podman_run`."""
    argv = [podman_command(), "run", "--pull=never", "--runtime", "runc",
            "--user", user, "--network", network]  # fmt: skip
    for ulimit in DEFAULT_ULIMITS:
        argv += ["--ulimit", ulimit]
    if read_only:
        argv.append("--read-only")
        # The pod's emptyDirs: /tmp a tmpfs (mode 1777); /var/lib/rtml an anonymous volume,
        # which starts as a copy of the image's directory (owned by 65532, as fsGroup would
        # make it); podman ignores `mode=` on other tmpfs mounts here (root, 0755).
        argv += ["--tmpfs", "/tmp", "--volume", "/var/lib/rtml"]
    argv += ["--detach"] if detach else ["--rm"]
    if name is not None:
        argv += ["--name", name]
    if entrypoint is not None:
        argv += ["--entrypoint", json.dumps(entrypoint)]
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    for host, container, ro in mounts:
        argv += ["--volume", f"{Path(host).resolve()}:{container}:{'ro' if ro else 'rw'}"]
    return [*argv, image, *args]


@overload
def podman_run(
    image: str,
    args: list[str],
    *,
    env: dict[str, str],
    mounts: list[tuple[str | Path, str, bool]],
    user: str = ...,
    read_only: bool = ...,
    network: str = ...,
    detach: Literal[False] = ...,
    name: str | None = ...,
    entrypoint: list[str] | None = ...,
    timeout: float = ...,
) -> subprocess.CompletedProcess[str]: ...


@overload
def podman_run(
    image: str,
    args: list[str],
    *,
    env: dict[str, str],
    mounts: list[tuple[str | Path, str, bool]],
    user: str = ...,
    read_only: bool = ...,
    network: str = ...,
    detach: Literal[True],
    name: str | None = ...,
    entrypoint: list[str] | None = ...,
    timeout: float = ...,
) -> str: ...


def podman_run(
    image: str,
    args: list[str],
    *,
    env: dict[str, str],
    mounts: list[tuple[str | Path, str, bool]],
    user: str = NONROOT,
    read_only: bool = True,
    network: str = "host",
    detach: bool = False,
    name: str | None = None,
    entrypoint: list[str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str] | str:
    """Run `image` with `args` (after its ENTRYPOINT, or `entrypoint` instead of it) as the pod
    would: read-only root, `user`, /tmp and /var/lib/rtml writable (tmpfs), runc, the ulimits
    this machine allows; `env` and `mounts` ((host path, container path, read-only)) added.

    Not detached: waits (at most `timeout` s) and returns the finished process, output captured
    as text, the container removed. Detached: returns the container's ID once it started; stop
    and remove it with :func:`podman_rm` (pass `name` to know it in advance)."""
    argv = podman_argv(
        image,
        args,
        env=env,
        mounts=mounts,
        user=user,
        read_only=read_only,
        network=network,
        detach=detach,
        name=name,
        entrypoint=entrypoint,
    )
    result = subprocess.run(argv, env=container_env(), capture_output=True, text=True,
                            timeout=timeout, check=False)  # fmt: skip
    if not detach:
        return result
    if result.returncode != 0:
        pytest.fail(f"podman run {image} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()


def podman_logs(name: str) -> str:
    """stdout and stderr of a (detached) container, for failure messages."""
    result = subprocess.run([podman_command(), "logs", name], env=container_env(),
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    return result.stdout + result.stderr


def podman_rm(name: str) -> None:
    """Stop (SIGTERM, then SIGKILL after 10 s) and remove a container and its anonymous volume;
    no error if it is gone."""
    subprocess.run([podman_command(), "rm", "--force", "--ignore", "--volumes", "--time", "10",
                    name],
                   env=container_env(), capture_output=True, timeout=60, check=False)  # fmt: skip


def podman_inspect(image: str, template: str) -> str:
    result = subprocess.run([podman_command(), "image", "inspect", "--format", template, image],
                            env=container_env(), capture_output=True, text=True, timeout=60,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="session")
def built_images() -> Iterator[dict[str, str]]:
    """The references of the runtime, operator and Redis images ({"runtime": ..., ...}).

    Fails (never skips) when they are not built: `rtml dev images build` builds them (CI does in
    .ci/env.sh). At the end of the session, removes what podman left on the host
    (/run/containers, empty libpod_parent cgroups) if it was not there before."""
    podman_command()
    with host_leftovers_removed():
        refs = built_refs(read_project(REPO).version)
        missing = sorted({"runtime", "operator", "redis"} - set(refs))
        if missing:
            pytest.fail(
                f"The {', '.join(missing)} image(s) are not built: run `rtml dev images build "
                f"--context {REPO}` (.ci/env.sh does it before the tests)."
            )
        yield refs
