"""Building the control plane's binaries (etcd, kube-apiserver, kube-controller-manager, kubectl,
helm) from the Go modules pinned under ``gotools/``, into a cache outside the checkout keyed by
those pins and the Go version, so a warm machine never rebuilds."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rtml.dev.errors import ToolsError
from rtml.dev.process import log_tail

log = logging.getLogger("rtml.dev")

GOTOOLS_DIR = Path(__file__).resolve().parent / "gotools"
# Hashed in this order (all go.mod, then all go.sum), like `cat tools/*/go.mod tools/*/go.sum`.
MODULES = ("etcd", "helm", "k8s")
# (binary, module dir, Go package), built in this order.
BINARIES = (
    ("etcd", "etcd", "go.etcd.io/etcd/server/v3"),
    ("kube-apiserver", "k8s", "k8s.io/kubernetes/cmd/kube-apiserver"),
    ("kube-controller-manager", "k8s", "k8s.io/kubernetes/cmd/kube-controller-manager"),
    ("kubectl", "k8s", "k8s.io/kubernetes/cmd/kubectl"),
    ("helm", "helm", "helm.sh/helm/v3/cmd/helm"),
)

Progress = Callable[[str], None]
# Stamp the Kubernetes binaries with their real version (clients and Helm's kubeVersion checks
# read it); bump RECIPE whenever the build command changes so cached binaries are rebuilt.
RECIPE = "2"
K8S_VERSION = "v1.35.4"
_VERSION_PKG = "k8s.io/component-base/version"
K8S_LDFLAGS = " ".join(
    f"-X {_VERSION_PKG}.{k}={v}"
    for k, v in (
        ("gitVersion", K8S_VERSION),
        ("gitMajor", "1"),
        ("gitMinor", "35"),
        ("gitTreeState", "clean"),
    )
)


def cache_root() -> Path:
    """``$RTML_CACHE_DIR``, else ``$XDG_CACHE_HOME/rtml``, else ``~/.cache/rtml``."""
    explicit = os.environ.get("RTML_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "rtml"


def cache_key(go_version: str, modules_dir: Path = GOTOOLS_DIR) -> str:
    """First 16 hex digits of the sha256 of the pins, a dash, and the Go version."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        for module in MODULES:
            path = modules_dir / module / name
            try:
                digest.update(path.read_bytes())
            except FileNotFoundError as error:
                raise ToolsError(
                    f"The pinned Go module file {path} is missing; the rtml installation is "
                    "incomplete."
                ) from error
    digest.update(RECIPE.encode())
    return f"{digest.hexdigest()[:16]}-{go_version}"


def go_version() -> str:
    """The output of ``go env GOVERSION``."""
    go = shutil.which("go")
    if go is None:
        raise ToolsError(
            "Go is not installed (no `go` on PATH); install Go 1.26 or newer from "
            "https://go.dev/dl/ so rtml can build etcd, kube-apiserver, kube-controller-manager, "
            "kubectl and helm for the local control plane."
        )
    result = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False)
    version = result.stdout.strip()
    if result.returncode != 0 or not version:
        raise ToolsError(
            f"`go env GOVERSION` failed (exit status {result.returncode}): "
            f"{result.stderr.strip() or 'no output'}"
        )
    return version


def bin_dir() -> Path:
    """Where the binaries for the current pins and Go version live (built or not)."""
    return cache_root() / "tools" / cache_key(go_version()) / "bin"


def ensure_tools(progress: Progress = print) -> Path:
    """Build whichever binaries are missing and return the directory holding all five."""
    target = bin_dir()
    target.mkdir(parents=True, exist_ok=True)
    with _build_lock(target.parent / ".build.lock"):
        for name, module, package in BINARIES:
            _ensure_binary(target, name, GOTOOLS_DIR / module, package, progress)
    return target


def _ensure_binary(
    target: Path, name: str, module_dir: Path, package: str, progress: Progress
) -> None:
    binary = target / name
    if os.access(binary, os.X_OK):
        progress(f"tools: {name} cached at {binary}")
        return
    progress(f"tools: building {name} from {package} (cold build, this takes minutes)...")
    started = time.monotonic()
    tmp = target / f"{name}.tmp"
    build_log = target.parent / f"build-{name}.log"
    env = {**os.environ, "CGO_ENABLED": "0"}
    command = [
        "go",
        "build",
        "-mod=mod",
        "-trimpath",
        "-ldflags=-s -w" + (f" {K8S_LDFLAGS}" if module_dir.name == "k8s" else ""),
        "-o",
        str(tmp),
        package,
    ]
    log.info("building %s: %s (in %s)", name, " ".join(command), module_dir)
    with build_log.open("wb") as out:
        result = subprocess.run(
            command, cwd=module_dir, env=env, stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise ToolsError(
            f"Building {name} from {package} failed (go build exited with status "
            f"{result.returncode}); the last lines of {build_log}:\n{log_tail(build_log)}"
        )
    tmp.replace(binary)
    progress(f"tools: built {name} in {time.monotonic() - started:.0f}s")


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Serialise builds between processes (parallel test sessions, two CLIs) on one cache."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
